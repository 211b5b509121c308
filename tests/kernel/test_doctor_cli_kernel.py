"""``hvsock doctor`` as a command on the real kernel (the test VM, vsock_loopback
loaded): moved from the host tier, which makes no real AF_VSOCK socket."""

from __future__ import annotations

import io
import json

from hvsock._cli import main as cli


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_doctor_cli_prints_each_check_and_sums_up() -> None:
    status, out, err = run("doctor", "vsock://any:5000")
    lines = out.splitlines()
    assert lines[0].startswith("hvsock doctor: linux, Python ")
    assert lines[0].endswith("address vsock://any:5000")
    assert any(line.split()[:2] == ["ok", "af_vsock"] for line in lines)
    assert any(line.split()[:2] == ["ok", "address_bind"] for line in lines)
    failed = int(lines[-1].split()[0])
    assert status == (0 if failed == 0 else 1)
    assert err == ""


def test_doctor_cli_json_for_cid_1_with_the_loopback_transport() -> None:
    status, out, _ = run("doctor", "--json", "vsock://local:5000")
    report = json.loads(out)
    assert report["address"] == "vsock://1:5000"
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["address_cid"]["status"] == "ok"
    assert "stays in this kernel" in by_name["address_cid"]["summary"]
    assert status == (0 if report["ok"] else 1)
