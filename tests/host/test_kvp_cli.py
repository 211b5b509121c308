"""``hvsock kvp`` on a guest's pool files: in-process through main(argv), and once as the
installed command."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
from pathlib import Path

import pytest

import hvsock.kvp as kvp
from hvsock._cli import main as cli


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_set_get_list_delete(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert run("kvp", "set", "Name", "välue", "--dir", d) == (0, "", "")
    assert run("kvp", "--dir", d, "get", "Name") == (0, "välue\n", "")
    assert run("kvp", "--dir", d, "set", "Name", "x", "--append")[0] == 0
    assert run("kvp", "list", "--dir", d) == (0, "Name=x\n", "")
    assert run("kvp", "list", "--all", "--dir", d) == (0, "Name=välue\nName=x\n", "")
    status, out, _ = run("kvp", "list", "--dir", d, "--json")
    assert json.loads(out) == [{"key": "Name", "value": "x"}]
    status, out, _ = run("kvp", "--json", "get", "Name", "--dir", d)
    assert json.loads(out) == {"key": "Name", "value": "x", "pool": "guest"}
    assert run("kvp", "delete", "Name", "--dir", d, "--json")[1].count('"removed": 2') == 1
    status, out, err = run("kvp", "get", "Name", "--dir", d)
    assert (status, out) == (1, "")
    assert "'Name' is not in pool guest" in err
    assert "nothing to do" in run("kvp", "delete", "Name", "--dir", d)[2]


def test_pools_and_the_host_pool_flag(tmp_path: Path) -> None:
    d = str(tmp_path)
    status, _, err = run("kvp", "set", "HostName", "h", "--pool", "auto-external", "--dir", d)
    assert status == cli.EXIT_USAGE
    assert "--host-pool" in err
    assert run("kvp", "--pool", "3", "--dir", d, "set", "HostName", "h", "--host-pool")[0] == 0
    assert run("kvp", "--dir", d, "get", "HostName", "--pool", "auto-external") == (0, "h\n", "")
    status, out, _ = run("kvp", "host-info", "--dir", d, "--json")
    assert json.loads(out)["host_name"] == "h"
    assert "host name: h\n" in run("kvp", "host-info", "--dir", d)[1]
    assert run("kvp", "clear", "--pool", "3", "--dir", d)[0] == cli.EXIT_USAGE
    status, _, err = run("kvp", "clear", "--pool", "3", "--host-pool", "--dir", d)
    assert (status, err) == (0, "hvsock: cleared pool auto-external (1 records)\n")


def test_host_pool_is_a_global_option_and_the_refusal_names_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    d = str(tmp_path)
    # Where usage lists it: with the global options, before the action.
    assert run("kvp", "--host-pool", "--pool", "3", "--dir", d, "set", "HostName", "h")[0] == 0
    assert run("kvp", "--host-pool", "--pool", "3", "--dir", d, "delete", "HostName") == (0, "", "")
    run("kvp", "--help")  # argparse prints help to the real stdout
    assert "[--host-pool]" in capsys.readouterr().out.partition("ACTION ...")[0]
    for argv in (["set", "k", "v"], ["delete", "k"], ["clear"]):
        status, _, err = run("kvp", "--pool", "0", "--dir", d, *argv)
        assert status == cli.EXIT_USAGE
        assert "add --host-pool" in err
        assert "allow_host_pool" not in err
    assert not (tmp_path / ".kvp_pool_0").exists()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["kvp", "set", "k" * 300, "v"], "UTF-16 units"),
        (["kvp", "set", "", "v"], "cannot be empty"),
        (["kvp", "get", "k", "--pool", "9"], "no KVP pool"),
        (["kvp", "--pool", "nine", "list"], "no KVP pool"),
        (["kvp", "list", "--lock-timeout", "0"], "positive"),
        (["kvp", "serve", "--vm", "vsock://3"], "serve runs on the guest"),
        (["kvp", "--vm", "vsock://3", "list", "--dir", "/x"], "drop it"),
        (["kvp", "set", "k", "v", "--export", "ps1"], "--export ps1 goes with --vm NAME"),
        (["kvp", "--vm", "nonsense://x", "list"], "nonsense"),
        (["kvp"], "ACTION"),
    ],
)
def test_bad_arguments(argv: list[str], fragment: str, tmp_path: Path) -> None:
    if "--dir" not in argv and "--vm" not in argv:
        argv = [*argv, "--dir", str(tmp_path)]
    status, out, err = run(*argv)
    assert status == cli.EXIT_USAGE, err
    assert fragment in err
    assert out == ""


def test_full_limits(tmp_path: Path) -> None:
    d = str(tmp_path)
    assert run("kvp", "set", "k", "v" * 2047, "--full", "--dir", d)[0] == 0
    assert run("kvp", "set", "k", "v" * 2048, "--full", "--dir", d)[0] == cli.EXIT_USAGE


def test_torn_pool_is_an_error(tmp_path: Path) -> None:
    (tmp_path / ".kvp_pool_1").write_bytes(b"x" * 10)
    status, _, err = run("kvp", "list", "--dir", str(tmp_path))
    assert status == cli.EXIT_ERROR
    assert "not a multiple of 2560" in err


def test_clear_stale(tmp_path: Path) -> None:
    d = str(tmp_path)
    kvp.open_pool(3, directory=d, allow_host_pool=True).set("HostName", "old")
    kvp.open_pool(directory=d).set("fresh", "1")
    os.utime(tmp_path / ".kvp_pool_3", (0, 0))  # written long before this boot
    status, out, _ = run("kvp", "clear", "--stale", "--dir", d, "--json")
    assert status == 0
    assert json.loads(out) == {"cleared": [{"pool": 3, "records": 1}]}
    assert kvp.open_pool(directory=d).get("fresh") == "1"
    assert "nothing to do" in run("kvp", "clear", "--stale", "--dir", d)[2]


def test_watch_prints_changes(tmp_path: Path) -> None:
    d = str(tmp_path)
    store = kvp.open_pool(directory=d)
    store.set("gone", "1")
    result: list[tuple[int, str, str]] = []
    thread = threading.Thread(
        target=lambda: result.append(
            run("kvp", "watch", "--dir", d, "--count", "2", "--interval", "0.02", "--for", "90")
        )
    )
    thread.start()
    # The watch starts from the pool as it is when it starts: wait until the first
    # change lands after that by writing until the watch has seen two changes.
    for i in range(1200):  # a minute of changes at most: the watch's start is no race
        store.set("new", str(i))
        store.delete("gone")
        thread.join(0.05)
        if not thread.is_alive():
            break
    thread.join(60)
    status, out, _ = result[0]
    assert status == 0
    lines = out.splitlines()
    assert len(lines) == 2
    assert all(line.startswith(("set new=", "delete gone")) for line in lines)


def test_hyperv_host_export(tmp_path: Path) -> None:
    status, out, _ = run("kvp", "--vm", "My VM", "set", "Role", "web", "--export", "ps1")
    assert status == 0
    assert "ModifyKvpItems" in out
    assert "<VALUE>Role</VALUE>" in out
    status, out, _ = run("kvp", "--vm", "My VM", "delete", "Role", "--export", "ps1")
    assert "RemoveKvpItems" in out
    status, _, err = run(
        "kvp", "--vm", "My VM", "set", "k", "v", "--pool", "guest", "--export", "ps1"
    )
    assert status == cli.EXIT_USAGE
    assert "pool 0" in err


def test_hyperv_host_without_powershell() -> None:
    status, _, err = run("kvp", "--vm", "My VM", "list")
    assert status == cli.EXIT_UNSUPPORTED
    assert "powershell.exe was not found" in err
    assert run("kvp", "--vm", "My VM", "host-info")[0] == cli.EXIT_UNSUPPORTED


def test_installed_command(tmp_path: Path, hvsock_cmd: list[str]) -> None:
    d = str(tmp_path)
    for argv in (["set", "k", "v"], ["set", "k2", "v2"]):
        subprocess.run([*hvsock_cmd, "kvp", *argv, "--dir", d], check=True, timeout=60)
    done = subprocess.run(
        [*hvsock_cmd, "kvp", "list", "--dir", d],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == "k=v\nk2=v2\n"
    done = subprocess.run(
        [*hvsock_cmd, "kvp", "get", "nope", "--dir", d],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
