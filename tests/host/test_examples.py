"""The example in docs/services.md and examples/ works as written."""

from __future__ import annotations

import json
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hvsock

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "kv_service.py"


def test_example_is_short_and_matches_the_guide() -> None:
    code = EXAMPLE.read_text()
    assert len(code.splitlines()) < 30
    guide = (EXAMPLE.parents[1] / "docs" / "services.md").read_text()
    assert code.strip() in guide, "docs/services.md must show examples/kv_service.py verbatim"


def test_example_service_as_a_process(short_tmp: Path) -> None:
    address = f"unix://{short_tmp}/kv.sock"
    ready = short_tmp / "ready.json"
    with subprocess.Popen(
        [sys.executable, str(EXAMPLE), address, str(ready)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as proc:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else b""
            assert time.monotonic() < deadline, "example never became ready"
            time.sleep(0.02)
        assert json.loads(ready.read_text())["services"] == {"Example KV": address}
        with hvsock.connect(address, timeout=5) as sock:
            rpc = hvsock.RpcClient(sock)
            assert rpc.call("put", {"key": "vm", "value": "ready"}) == "ok"
            assert rpc.call("get", {"key": "vm"}) == "ready"
            with pytest.raises(hvsock.RemoteError) as info:
                rpc.call("get", {"key": "nope"})
            assert info.value.code == "not_found"
            with pytest.raises(hvsock.RemoteError) as unknown:
                rpc.call("delete", {"key": "vm"})
            assert unknown.value.code == "unknown_method"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    assert not (short_tmp / "kv.sock").exists()


def test_example_declares_a_template_service() -> None:
    namespace = runpy.run_path(str(EXAMPLE), run_name="example")
    service = namespace["service"]
    assert service.port == 5001
    assert str(service.service_id) == "00001389-facb-11e6-bd58-64006a7986d3"
