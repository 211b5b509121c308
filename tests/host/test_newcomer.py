"""What a newcomer hits (issue 13, items 6, 7, 9-13): each fixed behaviour, checked."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hvsock
from hvsock._cli import addr_text, progress
from hvsock._cli import main as cli
from hvsock._service.default_log import default_log_handler

from ._peers import recv_until_eof

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "kv_service.py"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


class Child:
    """A child process whose stderr lines are read until a pattern shows (no sleeping)."""

    def __init__(self, argv: list[str], **kwargs: object) -> None:
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs
        )  # type: ignore[call-overload]
        self.lines: list[str] = []

    def wait_line(self, fragment: str, timeout: float = 20) -> str:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline().decode()
            if not line:
                break
            self.lines.append(line)
            if fragment in line:
                return line
        raise AssertionError(f"no stderr line with {fragment!r}: {self.lines}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def child() -> Iterator[list[Child]]:
    made: list[Child] = []
    yield made
    for c in made:
        c.close()


def _spawn(made: list[Child], argv: list[str], **kwargs: object) -> Child:
    c = Child(argv, **kwargs)
    made.append(c)
    return c


# -- 6: HVSOCK_PEER names the peer, not the listener ------------------------------------


def test_listen_exec_names_the_unix_peer_by_pid_and_uid(
    short_tmp: Path, hvsock_cmd: list[str], child: list[Child]
) -> None:
    path = short_tmp / "peer.sock"
    c = _spawn(
        child,
        [*hvsock_cmd, "listen", f"unix://{path}", "--once", "--exec", 'printf %s "$HVSOCK_PEER"'],
    )
    c.wait_line("listening on")
    with hvsock.connect(f"unix://{path}", timeout=5) as sock:
        hvsock.close_write(sock)
        peer = recv_until_eof(sock).decode()
    logged = c.wait_line("connection from")
    assert c.proc.wait(20) == 0
    who = f"(pid {os.getpid()}, uid {os.getuid()})"
    assert peer == f"unix://{path} {who}"
    assert who in logged
    assert "(peer)" not in peer


# -- 7: a service says where it listens and that it is ready ------------------------------


def test_the_example_says_where_it_listens_and_that_it_is_ready(
    short_tmp: Path, child: list[Child]
) -> None:
    address = f"unix://{short_tmp}/kv.sock"
    c = _spawn(child, [sys.executable, str(EXAMPLE), address])
    assert address in c.wait_line("listening on")
    assert "Example KV on " + address in c.wait_line("ready")
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(15) == 0


def test_the_default_log_handler_only_when_logging_is_unconfigured() -> None:
    logger = logging.getLogger("hvsock")
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # pytest's capture handlers: as in a script with no logging
    try:
        with default_log_handler():
            [handler] = logger.handlers
            assert logger.getEffectiveLevel() == logging.INFO
        assert logger.handlers == []
        assert logger.level == logging.NOTSET
        root.addHandler(logging.NullHandler())
        with default_log_handler():
            assert logger.handlers == []  # configured: leave it alone
    finally:
        root.handlers[:] = saved
    assert isinstance(handler, logging.StreamHandler)


# -- 9: the exports name the real file ------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "command"),
    [
        ("ps1", "powershell -ExecutionPolicy Bypass -File .\\my-agent.ps1"),
        ("reg", "reg import my-agent.reg"),
    ],
)
def test_an_export_written_with_o_names_that_file(tmp_path: Path, fmt: str, command: str) -> None:
    target = tmp_path / f"my-agent.{fmt}"
    status, _, err = run("register", "agent", "--port", "5000", "--export", fmt, "-o", str(target))
    assert status == 0
    assert command in err
    if fmt == "ps1":
        assert f"#   {command}\r\n" in target.read_bytes().decode("utf-8-sig")
        assert "hvsock-services.ps1" not in target.read_text(encoding="utf-8-sig")


def test_an_export_to_stdout_says_what_to_save_it_as() -> None:
    status, out, err = run("register", "agent", "--port", "5000", "--export", "reg")
    assert status == 0
    assert "save it as hvsock-services.reg, then" in err
    assert "reg import hvsock-services.reg" in err
    assert "FILE.reg" not in err
    assert out.startswith("Windows Registry Editor Version 5.00")


# -- 10: the library and CLI need only the standard library ---------------------------------


def test_tqdm_is_an_extra_not_a_dependency() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    deps = text.split("dependencies = ", 1)[1].split("\n", 1)[0]
    # Only a standard-library backport (tomllib's, for Python 3.10) may be a dependency.
    assert deps == "[\"tomli; python_version<'3.11'\"]"
    assert 'cli = ["tqdm' in text


def test_without_tqdm_progress_is_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tqdm", None)  # as if not installed: import fails
    monkeypatch.setattr(progress, "PLAIN_EVERY", 0.0)
    err = io.StringIO()
    with progress.progress_bar(err, True, "stress", "it") as update:
        update(1, 3)
        update(3, 3)
    assert err.getvalue() == "hvsock: stress: 1/3 it\nhvsock: stress: 3/3 it\n"
    quiet = io.StringIO()
    with progress.progress_bar(quiet, False, "stress") as update:
        update(3, 3)
    assert quiet.getvalue() == ""


# -- 11: `hvsock addr` explains each line, no value twice ------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "hvsock://parent/2761",
        "vsock://host:5000",
        "vsock://any:any",
        "hvsock://loopback/5000",
        "hybrid:///run/v.sock:52",
        "tcp://[::1]:22",
        "unix:///run/a.sock",
        "hvsock://wsl/22",
    ],
)
def test_addr_lines_each_explain_themselves_and_values_never_repeat(text: str) -> None:
    status, out, _ = run("addr", text)
    assert status == 0
    rows = addr_text.explain(hvsock.parse_address(text))
    # Addresses and ids (not short words such as "any" for both CID and port).
    values = [value for label, value, _ in rows if label != "note" and len(value) > 5]
    assert len(values) == len(set(values)), rows
    assert all(meaning for _, _, meaning in rows)
    assert out.splitlines()[0].split()[1] == str(hvsock.parse_address(text))


def test_addr_uses_the_canonical_form_for_names_and_numbers() -> None:
    _, out, _ = run("addr", "vsock://host:5000")
    assert "vsock://2:5000" in out
    assert "vsock://host" not in out
    _, out, _ = run("addr", "vsock://any:any")
    assert "4294967295" not in out


# -- 12: help ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command", ["service-id", "port", "addr", "cid", "demo", "ping", "services", "vms", "selftest"]
)
def test_every_command_has_a_description(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main([command, "--help"]) == 0
    usage, _, rest = capsys.readouterr().out.partition("\n\n")
    assert usage.startswith(f"usage: hvsock {command}")
    assert not rest.startswith(("positional arguments", "options")), rest[:80]


@pytest.mark.parametrize(
    ("argv", "option"),
    [
        (["ping", "--help"], "-c COUNT, --count COUNT"),
        (["ping", "--help"], "--timeout TIMEOUT"),
        (["ping", "--help"], "--retries RETRIES"),
        (["demo", "--help"], "--transport"),
        (["stress", "--help"], "-n CONNECTIONS, --connections CONNECTIONS"),
        (["stress", "--help"], "-P PARALLEL, --parallel PARALLEL"),
        (["connect", "--help"], "address"),
    ],
)
def test_options_have_help_text(
    argv: list[str], option: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    body = out.split("\n\n", 1)[1]  # past the usage lines
    line = next(line for line in body.splitlines() if line.strip().startswith(option))
    rest = line.strip()[len(option) :].strip()
    following = body.splitlines()[body.splitlines().index(line) + 1].strip()
    assert rest or following, f"{option} has no help text"
    assert not (following.startswith("-") and not rest)


@pytest.mark.parametrize(
    "argv",
    [["ping", "tcp://127.0.0.1:7", "--bogus"], ["bench", "client", "--zz", "tcp://127.0.0.1:7"]],
)
def test_an_unknown_option_prints_the_subcommands_usage(argv: list[str]) -> None:
    status, _, err = run(*argv)
    assert status == cli.EXIT_USAGE
    command = " ".join(a for a in argv if not a.startswith(("-", "tcp:")))
    assert f"usage: hvsock {command}" in err
    assert "unrecognized arguments" in err


# -- 13: messages, SIGTERM, grace ----------------------------------------------------------


def test_a_negative_port_is_out_of_range_not_a_non_number() -> None:
    status, _, err = run("connect", "vsock://3:-1")
    assert status == cli.EXIT_USAGE
    assert "port '-1' is out of range: it cannot be negative" in err


def test_the_retry_hint_uses_the_commands_spelling(short_tmp: Path) -> None:
    import socket

    with socket.socket() as probe:  # a port with nothing listening: bound, never listened
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        status, _, err = run("connect", f"tcp://127.0.0.1:{port}", "--timeout", "2")
    assert status == cli.EXIT_CONNECT
    assert "(or pass --retries N to wait for it)" in err
    assert "retries=" not in err
    with pytest.raises(hvsock.NothingListeningError, match=r"pass retries=N to wait"):
        hvsock.connect(f"tcp://127.0.0.1:{port}", timeout=2)


def test_one_byte_is_singular() -> None:
    from hvsock._cli.args import plural

    assert plural(1, "byte") == "1 byte"
    assert plural(2, "round trip") == "2 round trips"


@pytest.mark.parametrize("command", ["listen", "echo-server"])
def test_sigterm_stops_a_server_with_status_0(
    short_tmp: Path, hvsock_cmd: list[str], child: list[Child], command: str
) -> None:
    path = short_tmp / "term.sock"
    c = _spawn(child, [*hvsock_cmd, command, f"unix://{path}"])
    c.wait_line("listening on")
    c.proc.send_signal(signal.SIGTERM)
    assert c.proc.wait(20) == 0
    assert not path.exists()


def test_echo_server_grace_defaults_to_ten_seconds_like_servicehost_and_relay() -> None:
    parser = cli.build_parser()
    assert parser.parse_args(["echo-server", "unix:///x"]).grace == 10.0
    from hvsock._cli import relay_cmds

    relay_args = parser.parse_args(["relay", "unix:///x", "unix:///y"])
    assert relay_cmds.relay_config(relay_args).grace == 10.0
    assert hvsock.ServiceHost().grace == 10.0


def test_the_exit_rule_for_sigterm_is_documented_once() -> None:
    cli_md = (ROOT / "docs" / "cli.md").read_text()
    readme = (ROOT / "README.md").read_text()
    rule = "exits 0 on SIGTERM"
    assert rule in cli_md
    assert rule in readme
    assert json.dumps(cli.EXIT_TERMINATED) in cli_md
