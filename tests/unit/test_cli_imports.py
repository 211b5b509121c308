"""The CLI imports only what the chosen command runs (issue 8, start-up time).

Each command group module (``hvsock._cli.*_cmds``) builds its parser from argparse
and ``args`` alone and imports its implementation inside the handler. Heavy parts
(asyncio, the relay, the doctor, the Windows layer, the service framework) must not
load for ``hvsock --version`` or ``hvsock connect``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import hvsock
from hvsock._cli import (
    agent_cmds,
    cp_cmds,
    kvp_cmds,
    relay_cmds,
    service_cmds,
    tools_cmds,
    windows_cmds,
)

HEAVY = (
    "asyncio",
    "hvsock._relay",
    "hvsock._doctor",
    "hvsock._windows",
    "hvsock._service",
    "hvsock._builtin",
    "hvsock._aio",
    "concurrent.futures",
    # the public namespaces: re-exports for users, never on the CLI's path
    *(f"hvsock.{namespace}" for namespace in hvsock._NAMESPACES),
)

PROBE = """
import json, sys, types
if sys.argv[1] == "bare":
    # The package without its __init__ (which re-exports everything): what the CLI
    # modules themselves import.
    pkg = types.ModuleType("hvsock")
    pkg.__path__ = [sys.argv[2]]
    pkg.__version__ = "0"
    sys.modules["hvsock"] = pkg
else:
    import hvsock
import importlib, os
for name in filter(None, os.environ.get("PRELOAD", "").split(",")):
    importlib.import_module(name)
before = set(sys.modules)
from hvsock._cli.main import main
status = main(sys.argv[3:])
# Not stdout: `connect` closes it at the socket's EOF.
with open(os.environ["REPORT"], "w") as report:
    json.dump({"status": status, "before": sorted(before), "after": sorted(sys.modules)},
              report)
"""


def run_cli(
    *argv: str, bare: bool = False, preload: tuple[str, ...] = ()
) -> tuple[int, set[str], set[str]]:
    package_dir = str(Path(hvsock.__file__).parent)
    with tempfile.TemporaryDirectory() as tmp:
        report_path = os.path.join(tmp, "report.json")
        env = dict(os.environ, PRELOAD=",".join(preload), REPORT=report_path)
        proc = subprocess.run(
            [sys.executable, "-c", PROBE, "bare" if bare else "full", package_dir, *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert os.path.exists(report_path), proc.stderr
        with open(report_path) as f:
            report = json.load(f)
    return report["status"], set(report["before"]), set(report["after"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


def test_cli_constants_match_the_library() -> None:
    from hvsock._builtin import bench, demo, stress
    from hvsock._builtin.files import server as files_server
    from hvsock._relay import config as relay_config
    from hvsock._relay import datapath
    from hvsock._windows import export

    assert relay_cmds.DATA_PATHS == relay_config.DATA_PATHS
    assert relay_cmds.DEFAULT_CHUNK == datapath.DEFAULT_CHUNK
    assert relay_cmds.DEFAULT_BUSY_POLL == relay_config.DEFAULT_BUSY_POLL
    assert relay_cmds.DEFAULT_BUFFER_MEMORY == relay_config.DEFAULT_BUFFER_MEMORY
    assert tools_cmds.BENCH_DEFAULT_BUFFER == bench.DEFAULT_BUFFER
    assert tools_cmds.STRESS_DEFAULT_MAX_CHUNK == stress.DEFAULT_MAX_CHUNK
    assert service_cmds.DEMO_TRANSPORTS == demo.TRANSPORTS
    assert windows_cmds.EXPORT_FORMATS == export.FORMATS
    assert cp_cmds.DEFAULT_PORT == files_server.DEFAULT_PORT
    from hvsock._builtin.share import server as share_server
    from hvsock._cli import share_cmds

    assert share_cmds.DEFAULT_PORT == share_server.DEFAULT_PORT
    from hvsock._builtin.agent import config as agent_config
    from hvsock._builtin.agent import host as agent_host

    assert agent_cmds.DEFAULT_CONFIG_PATH == agent_config.DEFAULT_PATH
    assert tuple(agent_host.CATALOGUE) == agent_cmds.CATALOGUE_NAMES
    from hvsock._builtin.kvp import service as kvp_service
    from hvsock._builtin.kvp import store as kvp_store

    assert kvp_cmds.KVP_PORT == kvp_service.KVP_PORT
    assert kvp_cmds.DEFAULT_DIRECTORY == kvp_store.DEFAULT_DIRECTORY
    assert kvp_cmds.DEFAULT_LOCK_TIMEOUT == kvp_store.DEFAULT_LOCK_TIMEOUT
    assert kvp_cmds.DEFAULT_WATCH_INTERVAL == kvp_store.DEFAULT_WATCH_INTERVAL


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["service-id", "5000"],
        ["connect", "--timeout", "1", "unix:///nonexistent-dir-for-hvsock-test/x"],
    ],
)
def test_the_cli_itself_loads_nothing_heavy(argv: list[str]) -> None:
    # The CLI's own imports, without hvsock/__init__.py's re-exports (lazy there is
    # another matter: the next test) nor what the blocking transports import.
    status, before, after = run_cli(*argv, bare=True, preload=("hvsock._transports.api",))
    assert status in (0, 4), status
    assert heavy(after - before) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--version"],
        ["connect", "--timeout", "1", "unix:///nonexistent-dir-for-hvsock-test/x"],
    ],
)
def test_version_and_connect_load_nothing_heavy(argv: list[str]) -> None:
    status, before, after = run_cli(*argv)
    assert status in (0, 4), status
    if "asyncio" in before:
        pytest.skip(
            "`import hvsock` itself still imports asyncio (eager re-exports in hvsock/__init__.py)"
        )
    assert heavy(after) == []


def test_every_command_group_module_is_cheap_to_import() -> None:
    # Building the whole parser (every group, as `hvsock --help` does) adds nothing heavy.
    status, _, after = run_cli("--help", bare=True)
    assert status == 0
    assert heavy(after) == []
    cli_dir = Path(__file__).parents[2] / "src" / "hvsock" / "_cli"
    groups = {p.stem for p in cli_dir.glob("*_cmds.py")}
    from hvsock._cli import main

    assert set(main.EXTENSIONS) == groups


def test_each_command_builds_only_its_own_group() -> None:
    """main.OWNER (command -> group) agrees with what each group adds, so a command
    imports and builds no other group's parser."""
    import argparse

    from hvsock._cli import args, main

    owners: dict[str, str] = {}
    for name in main.EXTENSIONS:
        module = main.group(name)
        sub = args.Parser(prog="t").add_subparsers()
        added = module.add_commands(sub)
        assert tuple(added) == module.COMMANDS, name
        owners.update(dict.fromkeys(added, name))
    assert owners == main.OWNER
    assert main._groups_for(["relay", "--help"]) == ("relay_cmds",)
    assert main._groups_for(["--version"]) == ()
    assert main._groups_for(["--help"]) == main.EXTENSIONS
    assert main._groups_for(["nosuch"]) == main.EXTENSIONS
    assert isinstance(main.build_parser(["connect", "x"], every=False), argparse.ArgumentParser)


#: Standard-library modules that cost a large share of Python's own start-up and that
#: `hvsock connect` has no use for (issue 8: start-up within 2x of `import socket`).
SLOW_STDLIB = (
    "typing",
    "dataclasses",
    "inspect",
    "uuid",
    "platform",
    "shutil",
    "subprocess",
    "ipaddress",
    "asyncio",
)


@pytest.fixture
def closing_listener(short_tmp: Path) -> Iterator[str]:
    """A real Unix listener that accepts and closes each connection (in a short
    directory: tmp_path follows TMPDIR, which may be too long for a socket path)."""
    path = short_tmp / "closes.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    server.settimeout(30)

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = server.accept()
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"unix://{path}"
    server.close()
    thread.join(5)


@pytest.mark.parametrize("target", ["listening", "missing"])
def test_connect_loads_none_of_the_slow_stdlib_modules(
    target: str, closing_listener: str, short_tmp: Path
) -> None:
    address = closing_listener if target == "listening" else f"unix://{short_tmp}/nobody.sock"
    status, _, after = run_cli("connect", "--timeout", "5", address)
    assert status == (0 if target == "listening" else 4)
    assert sorted(m for m in SLOW_STDLIB if m in after) == []


def test_version_loads_none_of_the_slow_stdlib_modules() -> None:
    status, _, after = run_cli("--version")
    assert status == 0
    assert sorted(m for m in SLOW_STDLIB if m in after) == []


def test_help_still_follows_the_terminal_width() -> None:
    # add_argument's checks use a fixed-width formatter (no shutil); help text must
    # still be wrapped to COLUMNS, as argparse does.
    for columns in (50, 120):
        proc = subprocess.run(
            [sys.executable, "-m", "hvsock", "connect", "--help"],
            env=dict(os.environ, COLUMNS=str(columns)),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        lines = proc.stdout.splitlines()
        assert max(len(line) for line in lines) <= columns
        assert max(len(line) for line in lines) > columns - 20  # wrapped, not squeezed
