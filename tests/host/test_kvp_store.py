"""The pool-file store on real files: operations, locks against other programs, staleness."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import hvsock.kvp as kvp
from hvsock import ArgumentError, HvsockError, KvpError
from hvsock._builtin.kvp.store import KvpStore, diff

from ..attempts import Attempts

pytestmark = pytest.mark.usefixtures("fd_baseline")


def raw(path: Path) -> bytes:
    return path.read_bytes()


def test_default_pool_and_path() -> None:
    store = kvp.open_pool()
    assert store.pool == kvp.Pool.GUEST
    assert store.path == "/var/lib/hyperv/.kvp_pool_1"


def test_set_get_items_delete_clear(tmp_path: Path) -> None:
    store = kvp.open_pool(directory=tmp_path)
    assert store.items() == []  # no file yet: an empty pool
    assert store.get("a") is None
    store.set("a", "1")
    store.set("b", "2")
    store.set("a", "3")  # in place
    assert store.items() == [("a", "3"), ("b", "2")]
    assert store.get("a") == "3"
    assert "b" in store
    assert len(store) == 2
    assert os.stat(store.path).st_mode & 0o777 == 0o644
    assert store.delete("a") == 1
    assert store.delete("a") == 0
    assert store.items() == [("b", "2")]
    assert store.clear() == 1
    assert raw(Path(store.path)) == b""


def test_append_keeps_duplicates_and_set_collapses_them(tmp_path: Path) -> None:
    store = kvp.open_pool(directory=tmp_path)
    for i in range(3):
        store.append("dup", str(i))
        store.append(f"other{i}", "x")
    assert store.get("dup") == "2"  # the last one wins, as on the host
    store.set("dup", "final")
    assert store.items() == [("dup", "final"), ("other0", "x"), ("other1", "x"), ("other2", "x")]
    assert len(raw(Path(store.path))) == 4 * kvp.RECORD_SIZE


def test_delete_removes_every_duplicate_and_keeps_order(tmp_path: Path) -> None:
    store = kvp.open_pool(directory=tmp_path)
    for key in ["a", "x", "b", "x", "c", "x"]:
        store.append(key, key.upper())
    assert store.delete("x") == 3
    assert store.items() == [("a", "A"), ("b", "B"), ("c", "C")]


def test_set_with_no_change_leaves_the_file_alone(tmp_path: Path) -> None:
    store = kvp.open_pool(directory=tmp_path)
    store.set("a", "1")
    before = os.stat(store.path).st_mtime_ns
    os.utime(store.path, ns=(before - 10**9, before - 10**9))
    store.set("a", "1")
    assert os.stat(store.path).st_mtime_ns == before - 10**9


def test_records_of_other_programs_survive_byte_for_byte(tmp_path: Path) -> None:
    foreign = b"\xffodd".ljust(512, b"\0") + b"\xc3(".ljust(2048, b"\0")
    path = tmp_path / ".kvp_pool_1"
    path.write_bytes(foreign + kvp.encode_record("gone", "x") + kvp.encode_record("k", "v"))
    kvp.open_pool(directory=tmp_path).delete("gone")
    assert raw(path) == foreign + kvp.encode_record("k", "v")


def test_update_sets_many_under_one_lock(tmp_path: Path) -> None:
    store = kvp.open_pool(directory=tmp_path)
    store.update({f"k{i}": str(i) for i in range(5)})
    assert store.as_dict() == {f"k{i}": str(i) for i in range(5)}
    with pytest.raises(ArgumentError):
        store.update({"ok": "1", "bad\0": "2"})
    assert "ok" not in store  # checked before anything is written


def test_host_pools_need_the_flag(tmp_path: Path) -> None:
    for pool in (0, 2, 3, 4):
        with pytest.raises(ArgumentError, match="allow_host_pool=True"):
            kvp.open_pool(pool, directory=tmp_path).set("k", "v")
        assert not (tmp_path / f".kvp_pool_{pool}").exists()
    kvp.open_pool(3, directory=tmp_path, allow_host_pool=True).set("HostName", "h")
    assert kvp.open_pool("auto-external", directory=tmp_path).get("HostName") == "h"


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ArgumentError, match="no KVP pool"):
        kvp.open_pool("nine", directory=tmp_path)
    with pytest.raises(ArgumentError, match="lock_timeout"):
        kvp.open_pool(directory=tmp_path, lock_timeout=0)
    with pytest.raises(ArgumentError, match="'safe' or 'full'"):
        kvp.open_pool(directory=tmp_path, limits="big")
    store = kvp.open_pool(directory=tmp_path)
    with pytest.raises(ArgumentError, match="must be text"):
        store.get(1)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="must be text"):
        store.delete(None)  # type: ignore[arg-type]
    with pytest.raises(ArgumentError, match="UTF-16 units"):
        store.set("k", "v" * 1023)
    kvp.open_pool(directory=tmp_path, limits="full").set("k", "v" * 2047)
    assert store.get("k") == "v" * 2047
    with pytest.raises(ArgumentError, match="interval"):
        store.watch(interval=0)


def test_a_torn_file_is_reported_and_not_written(tmp_path: Path) -> None:
    path = tmp_path / ".kvp_pool_1"
    path.write_bytes(kvp.encode_record("a", "1") + b"half")
    store = kvp.open_pool(directory=tmp_path)
    for op in (
        store.items,
        lambda: store.set("b", "2"),
        lambda: store.append("b", "2"),
        lambda: store.delete("a"),
    ):
        with pytest.raises(KvpError, match="2564 bytes, not a multiple of 2560"):
            op()
    assert path.stat().st_size == 2564
    assert store.clear() == 1  # clear is the way out
    assert store.items() == []


_OPS: dict[str, Callable[[KvpStore], object]] = {
    "items": lambda s: s.items(),
    "get": lambda s: s.get("a"),
    "set": lambda s: s.set("a", "2"),
    "append": lambda s: s.append("a", "2"),
    "update": lambda s: s.update({"a": "2"}),
    "delete": lambda s: s.delete("a"),
    "clear": lambda s: s.clear(),
}


@pytest.mark.parametrize("op", sorted(_OPS))
def test_a_symlinked_pool_is_refused_and_its_target_untouched(tmp_path: Path, op: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(kvp.encode_record("a", "1"))  # a valid pool: only O_NOFOLLOW saves it
    (tmp_path / "pools").mkdir()
    (tmp_path / "pools" / ".kvp_pool_1").symlink_to(victim)
    store = kvp.open_pool(directory=tmp_path / "pools")
    with pytest.raises(KvpError, match=r"is a symbolic link, not a regular file.*remove it"):
        _OPS[op](store)
    assert victim.read_bytes() == kvp.encode_record("a", "1")


@pytest.mark.parametrize("op", sorted(_OPS))
def test_a_fifo_pool_is_refused_at_once(tmp_path: Path, op: str) -> None:
    fifo = tmp_path / ".kvp_pool_1"
    os.mkfifo(fifo)
    store = kvp.open_pool(directory=tmp_path)
    errors: list[BaseException] = []

    def attempt() -> None:
        try:
            _OPS[op](store)
        except BaseException as exc:  # handed to the test's thread
            errors.append(exc)

    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(30)  # an open that waits for a writer never returns on its own
    try:
        assert not worker.is_alive(), f"{op} on a FIFO pool is still blocked"
    finally:
        if worker.is_alive():  # release it: a FIFO open for reading and writing
            os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
            worker.join(30)
    assert len(errors) == 1, errors
    assert isinstance(errors[0], KvpError), errors
    assert "is a FIFO, not a regular file" in str(errors[0])
    assert fifo.exists()
    assert not fifo.is_file()


def test_a_directory_at_the_pool_path_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".kvp_pool_1").mkdir()
    store = kvp.open_pool(directory=tmp_path)
    for op in _OPS.values():
        with pytest.raises(KvpError, match="is a directory, not a regular file"):
            op(store)


def test_a_missing_directory_is_made_on_write(tmp_path: Path) -> None:
    store = kvp.open_pool(directory=tmp_path / "a" / "b")
    store.set("k", "v")
    assert (tmp_path / "a" / "b").stat().st_mode & 0o777 == 0o755


# -- locks: the daemon's fcntl lock and cloud-init's flock, held by another process --

HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
if sys.argv[2] == "fcntl":
    fcntl.lockf(fd, fcntl.LOCK_EX)   # a process-associated POSIX lock, as hv_kvp_daemon's
else:
    fcntl.flock(fd, fcntl.LOCK_EX)   # as cloud-init's handler
print("locked", flush=True)
if sys.stdin.readline() == "append\n":  # still under the lock: a record of our own
    os.pwrite(fd, b"holder".ljust(512, b"\0") + b"1".ljust(2048, b"\0"), os.fstat(fd).st_size)
"""


@pytest.fixture(params=["fcntl", "flock"])
def held(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / ".kvp_pool_1"), request.param],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    try:
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
        proc.stdout.close()


def test_lock_held_by_another_program_times_out_clearly(
    held: subprocess.Popen[str], tmp_path: Path
) -> None:
    store = kvp.open_pool(directory=tmp_path, lock_timeout=0.3)
    start = time.monotonic()
    for op in (lambda: store.set("k", "v"), store.items):
        with pytest.raises(KvpError, match=r"stayed locked for 0\.3 s") as info:
            op()
        assert isinstance(info.value, OSError)
    assert time.monotonic() - start < 5


def test_write_waits_for_the_lock_and_then_goes_through(
    held: subprocess.Popen[str], tmp_path: Path
) -> None:
    store = kvp.open_pool(directory=tmp_path, lock_timeout=30)
    done = threading.Event()
    errors: list[BaseException] = []

    def write() -> None:
        try:
            store.set("k", "v")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        done.set()
        attempts.stop()  # a set that did not wait: the test need not wait for attempts

    # Non-blocking flock attempts: once a second one began, the first surely found the
    # lock taken, so the set is waiting however fast or slow the machine is.
    with Attempts("fcntl.flock", lambda args: bool(args[1] & fcntl.LOCK_NB)) as attempts:
        thread = threading.Thread(target=write)
        thread.start()
        try:
            attempts.wait(2, "the set waiting for the lock")
        finally:
            assert held.stdin is not None
            held.stdin.write("append\n")  # the holder appends, then lets go
            held.stdin.flush()
            assert done.wait(60)
            thread.join(5)
    assert not errors
    # Our record comes after the holder's: the set waited for the lock.
    assert store.items() == [("holder", "1"), ("k", "v")]


def test_two_stores_in_one_process_exclude_each_other(tmp_path: Path) -> None:
    # OFD locks belong to the open file, so two threads of one process exclude each
    # other too (a process-associated POSIX lock would not).
    store = kvp.open_pool(directory=tmp_path, lock_timeout=0.2)
    store.set("k", "v")
    fd = os.open(store.path, os.O_RDWR)
    try:
        from hvsock._builtin.kvp.store import locked

        with (
            locked(fd, exclusive=True, timeout=1, where="test"),
            pytest.raises(KvpError, match="stayed locked"),
        ):
            store.get("k")
    finally:
        os.close(fd)


# -- staleness and host facts --------------------------------------------------------


def test_stale_pools(tmp_path: Path) -> None:
    for pool in (1, 3):
        kvp.open_pool(pool, directory=tmp_path, allow_host_pool=True).set("k", "v")
    kvp.open_pool(0, directory=tmp_path, allow_host_pool=True).clear()  # empty
    boot = time.time() + 100  # as if the machine booted after the files were written
    assert kvp.open_pool(3, directory=tmp_path).is_stale(boot)
    assert not kvp.open_pool(3, directory=tmp_path).is_stale(time.time() - 100)
    assert not kvp.open_pool(2, directory=tmp_path).is_stale(boot)  # no file
    stale = kvp.stale_pools(str(tmp_path), boot=boot)
    assert [s.pool for s in stale] == [kvp.Pool.GUEST, kvp.Pool.AUTO_EXTERNAL]


def test_boot_time_from_proc_stat(tmp_path: Path) -> None:
    assert (
        abs(kvp.boot_time() - (time.time() - float(Path("/proc/uptime").read_text().split()[0])))
        < 5
    )
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "stat").write_text("cpu 1 2 3\nbtime 1700000000\n")
    assert kvp.boot_time(str(tmp_path)) == 1700000000
    (tmp_path / "proc" / "stat").write_text("cpu 1 2 3\n")
    with pytest.raises(HvsockError, match="no btime"):
        kvp.boot_time(str(tmp_path))
    with pytest.raises(HvsockError, match="cannot read the boot time"):
        kvp.boot_time(str(tmp_path / "nowhere"))


def test_host_info(tmp_path: Path) -> None:
    vm_id = uuid.uuid4()
    kvp.open_pool(3, directory=tmp_path, allow_host_pool=True).update(
        {
            "HostName": "hv-01",
            "PhysicalHostNameFullyQualified": "hv-01.example.com",
            "VirtualMachineName": "web",
            "VirtualMachineId": str(vm_id).upper(),
            "HostingSystemOsMajor": "10",
            "HostingSystemOsMinor": "zero",
            "Other": "x",
        }
    )
    facts = kvp.host_info(tmp_path)
    assert facts.host_name == "hv-01"
    assert facts.physical_host_name is None
    assert facts.physical_host_name_fqdn == "hv-01.example.com"
    assert facts.vm_name == "web"
    assert facts.vm_id == vm_id
    assert facts.hosting_os_major == 10
    assert facts.hosting_os_minor is None  # not a number: kept in raw only
    assert facts.raw["HostingSystemOsMinor"] == "zero"
    assert facts.as_dict()["vm_id"] == str(vm_id)
    assert kvp.host_info(tmp_path / "none") == kvp.HostFacts()


# -- watch ----------------------------------------------------------------------------


def test_watch_yields_changes_as_they_happen(tmp_path: Path) -> None:
    store = kvp.open_pool(directory=tmp_path)
    store.set("keep", "1")
    store.set("drop", "1")
    changes = store.watch(interval=0.02, timeout=20, max_changes=3)  # the start is now
    store.set("new", "v")
    got: list[kvp.Change] = [next(changes)]
    store.set("keep", "2")
    got.append(next(changes))
    store.delete("drop")
    got += list(changes)
    assert [(c.kind, c.key, c.value) for c in got] == [
        ("set", "new", "v"),
        ("set", "keep", "2"),
        ("delete", "drop", None),
    ]
    assert got[1].old == "1"


def test_watch_sees_a_writer_in_another_thread(tmp_path: Path) -> None:
    store = kvp.open_pool(directory=tmp_path)
    changes = store.watch(interval=0.02, timeout=20, max_changes=20)
    thread = threading.Thread(target=lambda: [store.set(f"k{i}", "v") for i in range(20)])
    thread.start()
    keys = set()
    for change in changes:  # writes between two looks arrive together: wait for the last
        keys.add(change.key)
        if change.key == "k19":
            break
    thread.join(10)
    assert "k19" in keys
    assert keys <= {f"k{i}" for i in range(20)}
    assert store.as_dict() == {f"k{i}": "v" for i in range(20)}


def test_watch_ends_at_its_timeout(tmp_path: Path) -> None:
    start = time.monotonic()
    assert list(kvp.open_pool(directory=tmp_path).watch(interval=0.01, timeout=0.2)) == []
    assert time.monotonic() - start < 5


def test_diff() -> None:
    assert diff({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"}) == [
        kvp.Change("set", "b", "3", "2"),
        kvp.Change("set", "c", "4", None),
    ]
    assert diff({"a": "1"}, {}) == [kvp.Change("delete", "a", None, "1")]


def test_store_is_a_value() -> None:
    assert KvpStore(1, "/x") == KvpStore(kvp.Pool.GUEST, "/x")
