"""Many writer processes and readers on one pool at once: no torn record, no lost one.

Writers use hvsock (set, then delete some: deletes move records down and truncate);
one more process appends the way cloud-init does (flock only, O_APPEND). Readers read
under the locks the whole time and check every record they see. Bounded in count and
time: each process does a fixed amount of work, and the test waits at most 120 s.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hvsock.kvp as kvp

WRITERS = 6
KEYS = 25
READERS = 3

WRITER = r"""
import sys
import hvsock.kvp as kvp
directory, me, keys = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = kvp.open_pool(directory=directory, lock_timeout=60)
for j in range(keys):
    store.set(f"w{me}-{j}", f"value of w{me}-{j} " + "x" * (j * 37 % 900))
    store.set("shared", f"w{me}-{j}")
for j in range(0, keys, 5):
    store.delete(f"w{me}-{j}")
"""

APPENDER = r"""
import fcntl, sys
path, keys = sys.argv[1], int(sys.argv[2])
for j in range(keys):
    with open(path, "ab") as f:  # as cloud-init's handler appends
        fcntl.flock(f, fcntl.LOCK_EX)
        f.write(f"ci-{j}".encode().ljust(512, b"\0") + f"ci value {j}".encode().ljust(2048, b"\0"))
        f.flush()
        fcntl.flock(f, fcntl.LOCK_UN)
"""

READER = r"""
import json, os, sys, time
import hvsock.kvp as kvp
directory, done_file = sys.argv[1], sys.argv[2]
store = kvp.open_pool(directory=directory, lock_timeout=60)
reads = records = bad = 0
deadline = time.monotonic() + 100
while time.monotonic() < deadline and reads < 100000:
    finished = os.path.exists(done_file)
    for key, value in store.items():   # KvpError on a torn file ends the reader: reported
        records += 1
        ok = (key == "shared" and value.startswith("w")) or \
             (key.startswith("w") and value.startswith(f"value of {key} ")) or \
             (key.startswith("ci-") and value == f"ci value {key[3:]}")
        bad += not ok
    reads += 1
    if finished:
        break
print(json.dumps({"reads": reads, "records": records, "bad": bad}))
"""


def test_many_writers_and_readers(tmp_path: Path) -> None:
    directory = tmp_path / "pools"
    directory.mkdir()
    kvp.open_pool(directory=directory).clear()  # the file exists for the appender
    done_file = tmp_path / "done"
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(directory), str(done_file)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(READERS)
    ]
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory), str(i), str(KEYS)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(WRITERS)
    ]
    writers.append(
        subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(directory / ".kvp_pool_1"), str(KEYS)],
            stderr=subprocess.PIPE,
            text=True,
        )
    )
    try:
        for proc in writers:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        done_file.touch()
        results = []
        for proc in readers:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            results.append(json.loads(out))
    for result in results:
        assert result["bad"] == 0, result
        assert result["reads"] >= 1
    items = kvp.open_pool(directory=directory).items()
    keys = [k for k, _ in items]
    assert len(keys) == len(set(keys)), "a key is in the pool twice"
    expected = {f"w{i}-{j}" for i in range(WRITERS) for j in range(KEYS) if j % 5}
    expected |= {f"ci-{j}" for j in range(KEYS)} | {"shared"}
    assert set(keys) == expected  # nothing lost, nothing left that was deleted
    assert dict(items)["shared"] in {f"w{i}-{KEYS - 1}" for i in range(WRITERS)}
    assert (directory / ".kvp_pool_1").stat().st_size == len(expected) * kvp.RECORD_SIZE
