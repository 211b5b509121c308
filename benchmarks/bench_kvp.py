"""KVP pool files: hvsock.kvp against cloud-init's HyperVKvpReportingHandler, same files.

Both run in one worker process under Debian's /usr/bin/python3 (where cloud-init is
installed; hvsock is put on its path from src/), one after the other on fresh files in
the same directory, so the ratios compare the two implementations on equal terms:

- append rate: ``KvpStore.append`` (both locks, a record at the end) against
  ``_append_kvp_item`` (flock, O_APPEND);
- set rate on a 100-key pool: ``KvpStore.set`` (read, rewrite one record in place)
  against ``_append_kvp_item`` (cloud-init has no set: it appends);
- get rate on a 100-key pool: ``KvpStore.get`` against a scan of ``_iterate_kvps(0)``;
- read rate of a 1000-record pool: ``KvpStore.items`` against ``list(_iterate_kvps(0))``.

Rates are operations per second; a ratio above 1 means hvsock is faster.
Usage: ``.venv/bin/python benchmarks/bench_kvp.py [--json] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _report import emit, row

SYSTEM_PYTHON = "/usr/bin/python3"
SRC = Path(__file__).resolve().parent.parent / "src"

WORKER = r"""
import json, os, sys, tempfile, time
from cloudinit.reporting.handlers import HyperVKvpReportingHandler
import hvsock.kvp as kvp

n = int(sys.argv[1])
out = {}

def rate(fn, count):
    start = time.perf_counter()
    fn(count)
    return count / (time.perf_counter() - start)

with tempfile.TemporaryDirectory() as d:
    def fresh(name):
        path = os.path.join(d, name)
        os.makedirs(path)
        return path

    # append: n records each
    ours = kvp.open_pool(directory=fresh("a"))
    ci = HyperVKvpReportingHandler(kvp_file_path=os.path.join(fresh("b"), ".kvp_pool_1"))
    out["append"] = (
        rate(lambda c: [ours.append(f"key{i}", "v" * 100) for i in range(c)], n),
        rate(lambda c: [ci._append_kvp_item([ci._encode_kvp_item(f"key{i}", "v" * 100)])
                        for i in range(c)], n))

    # set / get on a 100-key pool
    ours = kvp.open_pool(directory=fresh("c"))
    ours.update({f"key{i}": "v" * 100 for i in range(100)})
    ci = HyperVKvpReportingHandler(kvp_file_path=os.path.join(fresh("d"), ".kvp_pool_1"))
    ci._append_kvp_item([ci._encode_kvp_item(f"key{i}", "v" * 100) for i in range(100)])
    out["set"] = (
        rate(lambda c: [ours.set(f"key{i % 100}", f"value {i}") for i in range(c)], n),
        rate(lambda c: [ci._append_kvp_item([ci._encode_kvp_item(f"key{i % 100}",
                                                                   f"value {i}")])
                        for i in range(c)], n))
    ci = HyperVKvpReportingHandler(kvp_file_path=os.path.join(fresh("e"), ".kvp_pool_1"))
    ci._append_kvp_item([ci._encode_kvp_item(f"key{i}", "v" * 100) for i in range(100)])

    def ci_get(c):
        for i in range(c):
            want = f"key{i % 100}"
            found = None
            for item in ci._iterate_kvps(0):
                if item["key"] == want:
                    found = item["value"]
            assert found is not None

    def ours_get(c):
        for i in range(c):
            assert ours.get(f"key{i % 100}") is not None

    out["get"] = (rate(ours_get, n), rate(ci_get, n))

    # full reads of a 1000-record pool
    ours = kvp.open_pool(directory=fresh("f"))
    ours.update({f"key{i}": "v" * 100 for i in range(1000)})
    ci = HyperVKvpReportingHandler(kvp_file_path=os.path.join(fresh("g"), ".kvp_pool_1"))
    ci._append_kvp_item([ci._encode_kvp_item(f"key{i}", "v" * 100) for i in range(1000)])
    reads = max(10, n // 20)
    out["read"] = (rate(lambda c: [ours.items() for _ in range(c)], reads),
                   rate(lambda c: [list(ci._iterate_kvps(0)) for _ in range(c)], reads))
print(json.dumps(out))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="fewer operations")
    args = parser.parse_args()
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        print(
            f"bench_kvp: {SYSTEM_PYTHON} is missing; apt-get install -y cloud-init", file=sys.stderr
        )
        return 3
    n = 200 if args.quick else 2000
    env = dict(os.environ, PYTHONPATH=str(SRC))
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", WORKER, str(n)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        print(
            f"bench_kvp: the worker failed (is cloud-init installed?):\n{done.stderr}",
            file=sys.stderr,
        )
        return 1
    got = json.loads(done.stdout)
    base = "cloud-init HyperVKvpReportingHandler"
    rows = [
        row("append rate", "records/s", *got["append"], f"{base} _append_kvp_item"),
        row("set rate, 100-key pool", "sets/s", *got["set"], f"{base} append (it has no set)"),
        row("get rate, 100-key pool", "gets/s", *got["get"], f"{base} _iterate_kvps scan"),
        row("read rate, 1000-record pool", "reads/s", *got["read"], f"{base} list(_iterate_kvps)"),
    ]
    emit(rows, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
