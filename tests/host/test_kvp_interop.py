"""KVP pool files shared with code nobody here wrote: cloud-init and hyperkv.

cloud-init (Debian package ``cloud-init``, run by Debian's ``/usr/bin/python3``) writes
and reads pool files with ``HyperVKvpReportingHandler(kvp_file_path=...)``; ``hyperkv``
(PyPI) reads them. Each test runs the other program on the same file hvsock uses.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

import hvsock.kvp as kvp

SYSTEM_PYTHON = "/usr/bin/python3"

CLOUD_INIT = r"""
import json, sys
from cloudinit.reporting import events
from cloudinit.reporting.handlers import HyperVKvpReportingHandler

path, action = sys.argv[1], sys.argv[2]
handler = HyperVKvpReportingHandler(kvp_file_path=path)
if action == "write":
    items = json.loads(sys.stdin.read())
    handler._append_kvp_item([handler._encode_kvp_item(k, v) for k, v in items])
    # and one event the way cloud-init publishes them, through its thread
    handler.publish_event(events.ReportingEvent("start", "hvsock-interop", "a message"))
    handler.flush()
else:
    print(json.dumps([[i["key"], i["value"]] for i in handler._iterate_kvps(0)]))
"""


def cloud_init_available() -> bool:
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return False
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import cloudinit.reporting.handlers"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0


# CI (HVSOCK_REQUIRE_KERNEL_TIER=1) installs cloud-init with the test VM: there it must run.
needs_cloud_init = pytest.mark.skipif(
    not cloud_init_available() and os.environ.get("HVSOCK_REQUIRE_KERNEL_TIER") != "1",
    reason="cloud-init is not installed (apt-get install -y cloud-init)",
)


def cloud_init(path: Path, action: str, stdin: str = "") -> Any:
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", CLOUD_INIT, str(path), action],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if action == "read" else None


ITEMS = [
    ("plain", "value"),
    ("ünïcode ✓", "ωμέγα 😀"),
    ("long", "x" * 1022),
    ("k" * 254, "edge of the safe key limit"),
    ("empty", ""),
]


@needs_cloud_init
def test_cloud_init_reads_what_hvsock_writes(tmp_path: Path) -> None:
    store = kvp.open_pool(directory=tmp_path)
    for key, value in ITEMS:
        store.set(key, value)
    store.append("plain", "second")  # a duplicate, then a delete that compacts
    store.set("gone", "soon")
    store.delete("gone")
    got = cloud_init(tmp_path / ".kvp_pool_1", "read")
    assert [tuple(i) for i in got] == [*ITEMS, ("plain", "second")]


@needs_cloud_init
def test_hvsock_reads_what_cloud_init_writes(tmp_path: Path) -> None:
    path = tmp_path / ".kvp_pool_1"
    cloud_init(path, "write", json.dumps(ITEMS))
    items = kvp.open_pool(directory=tmp_path).items()
    assert items[: len(ITEMS)] == ITEMS
    events = [(k, json.loads(v)) for k, v in items[len(ITEMS) :]]
    assert len(events) == 1
    key, event = events[0]
    assert key.startswith("CLOUD_INIT|")
    assert event["name"] == "hvsock-interop"
    assert event["msg"] == "a message"
    # ...and hvsock edits the file cloud-init wrote, which cloud-init then reads back.
    store = kvp.open_pool(directory=tmp_path)
    store.delete(key)
    store.set("plain", "changed")
    again = [tuple(i) for i in cloud_init(path, "read")]
    assert again == [("plain", "changed"), *ITEMS[1:]]


@needs_cloud_init
def test_cloud_init_appends_to_a_pool_hvsock_keeps(tmp_path: Path) -> None:
    store = kvp.open_pool(directory=tmp_path)
    store.set("first", "1")
    cloud_init(tmp_path / ".kvp_pool_1", "write", json.dumps([["second", "2"]]))
    store.set("third", "3")
    assert [k for k, _ in store.items()][:2] == ["first", "second"]
    assert store.items()[-1] == ("third", "3")


def test_hyperkv_reads_what_hvsock_writes(tmp_path: Path) -> None:
    hyperkv = pytest.importorskip("hyperkv")
    store = kvp.open_pool(3, directory=tmp_path, allow_host_pool=True)
    for key, value in ITEMS:
        store.set(key, value)
    full = kvp.open_pool(directory=tmp_path, limits="full")
    # The longest fields hvsock writes still end in a NUL, which hyperkv cuts at (a field
    # with none would lose its last byte there).
    full.set("k" * 511, "v" * 2047)
    assert dict(hyperkv.read_kv_from_file(str(tmp_path / ".kvp_pool_3"))) == dict(ITEMS)
    assert dict(hyperkv.read_kv_from_file(str(tmp_path / ".kvp_pool_1"))) == {"k" * 511: "v" * 2047}
