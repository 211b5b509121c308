"""``hvsock selftest``'s Linux steps on a real kernel with vsock_loopback (the test VM)."""

from __future__ import annotations

import io
import json
import os

import pytest

from hvsock._cli import main as cli
from hvsock._selftest import FAILED, NOT_APPLICABLE, OK, run_selftest
from hvsock._selftest.linux import loopback_round_trip

from ._support import Listening, started, target, unused_port

pytestmark = [pytest.mark.kernel, pytest.mark.timeout(120)]

LINUX_STEPS = ["af_vsock", "vsock_transports", "local_cid", "vsock_loopback", "host_echo"]


def test_the_loopback_round_trip_runs_for_real() -> None:
    where = loopback_round_trip(timeout=30)
    assert where.startswith("vsock://1:")


def test_every_linux_step_runs_and_the_guest_transport_is_judged_by_what_is_loaded() -> None:
    report = run_selftest(platform="linux")
    assert [s.name for s in report.steps] == LINUX_STEPS
    assert report["af_vsock"].status == OK
    assert report["local_cid"].status == OK
    assert report["vsock_loopback"].status == OK, report["vsock_loopback"]
    assert report["host_echo"].status == NOT_APPLICABLE
    modules = set(os.listdir("/sys/module"))
    reaches_host = modules & {"vmw_vsock_virtio_transport", "hv_sock", "vmw_vsock_vmci_transport"}
    assert report["vsock_transports"].status == (OK if reaches_host else FAILED)
    assert "vsock_loopback" in report["vsock_transports"].summary


def test_the_echo_step_pings_an_echo_server_it_is_given(vsock_listener: Listening) -> None:
    def echo_one_connection() -> int:
        echoed = 0
        with vsock_listener.accept() as conn:
            conn.settimeout(60)
            while data := conn.recv(65536):
                conn.sendall(data)
                echoed += len(data)
        return echoed

    server = started(echo_one_connection)
    report = run_selftest(platform="linux", echo=target(vsock_listener.port))
    assert server.finish(60) == 3 * 1024
    assert report["host_echo"].status == OK, report["host_echo"]
    assert "3 echoes of 1024 bytes" in report["host_echo"].summary


def test_the_echo_step_fails_with_the_errno_when_nothing_listens() -> None:
    report = run_selftest(platform="linux", echo=target(unused_port()))
    step = report["host_echo"]
    assert step.status == FAILED
    assert step.error_code is not None
    assert not report.ok


def test_the_command_prints_json_with_every_step() -> None:
    out, err = io.StringIO(), io.StringIO()
    status = cli.main(["selftest", "--json"], out=out, err=err)
    report = json.loads(out.getvalue())
    assert [s["name"] for s in report["steps"]] == LINUX_STEPS
    assert {s["name"]: s["status"] for s in report["steps"]}["vsock_loopback"] == OK
    assert status == (0 if report["ok"] else 1)
