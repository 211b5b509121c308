"""KVP pool files on a Linux guest: read and write them beside ``hv_kvp_daemon``.

Locking. The kernel daemon takes ``fcntl(F_SETLKW, F_WRLCK)`` over the whole file;
cloud-init takes ``flock``. On Linux those are separate lock domains, so every operation
here takes both: an OFD ``fcntl`` lock (``F_OFD_SETLK``; a process-associated POSIX lock
where OFD locks are missing), which conflicts with the daemon's POSIX lock, and ``flock``,
which conflicts with cloud-init's. Both are tried without blocking and retried with a
short backoff up to the lock timeout, because ``F_SETLKW`` cannot time out and a lock held
long makes the host give up (30 s). They are held for one operation only.

Writing in place, not write-and-rename. The daemon opens each pool once at start and
keeps that descriptor for its lock; a file renamed over the pool would be a new inode
the daemon's lock no longer covers, so the two would stop excluding each other (and
cloud-init keeps appending to whichever inode it opened). So writes change the file in
place, under both locks, in whole 2560-byte records at record offsets: a set rewrites
one record, an append adds one at the end, a delete moves the later records down and
then truncates. Readers that take either lock (the daemon, cloud-init, hvsock) never see
a torn record. A crash between the move and the truncate leaves a repeated record at
the end, never half of one; the host keeps the last of duplicates, which is the same.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from ..._core import kvp as codec
from ..._core.kvp import RECORD_SIZE, Pool
from ..._errors import (
    ArgumentError,
    HvsockError,
    KvpError,
    UnsupportedError,
    translate,
)
from ..._validate import non_negative_number, positive_number, quote, whole_number

DEFAULT_DIRECTORY = "/var/lib/hyperv"
#: Seconds to wait for the pool's locks. The daemon holds them for one read or write
#: of the file; the host itself gives up on the guest after 30 s.
DEFAULT_LOCK_TIMEOUT = 5.0
#: Seconds between two looks at the pool while watching it.
DEFAULT_WATCH_INTERVAL = 0.25

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: its pools are in the registry
    fcntl = None  # type: ignore[assignment]

# struct flock on 64-bit Linux: l_type, l_whence (short), l_start, l_len (off_t),
# l_pid (int, 0 for OFD locks), padding to 32 bytes.
_FLOCK = "hhqqi4x"
_OFD = (
    fcntl is not None
    and hasattr(fcntl, "F_OFD_SETLK")
    and struct.calcsize("l") == 8
    and struct.calcsize(_FLOCK) == 32
)


@dataclass(frozen=True)
class Change:
    """One change seen by :meth:`KvpStore.watch`: *kind* is ``"set"`` or ``"delete"``."""

    kind: str
    key: str
    value: str | None
    old: str | None

    def as_dict(self) -> dict[str, str | None]:
        return {"kind": self.kind, "key": self.key, "value": self.value, "old": self.old}


def diff(before: dict[str, str], after: dict[str, str]) -> list[Change]:
    """The changes that turn *before* into *after* (sets first, in *after*'s order)."""
    changes = [Change("set", k, v, before.get(k)) for k, v in after.items() if before.get(k) != v]
    changes += [Change("delete", k, None, v) for k, v in before.items() if k not in after]
    return changes


def poll_changes(
    read: Callable[[], dict[str, str]],
    signature: Callable[[], object],
    *,
    interval: float,
    timeout: float | None,
    max_changes: int | None,
) -> Iterator[Change]:
    """Yield changes of ``read()`` as they happen, looking every *interval* seconds.

    The starting state is read now, so every change after this call is seen.
    ``read()`` runs again only when ``signature()`` (a cheap stat) changed. Ends after
    *timeout* seconds or *max_changes* changes, whichever comes first.
    """
    positive_number(interval, "interval")
    non_negative_number(timeout, "timeout", optional=True)
    if max_changes is not None:
        whole_number(max_changes, "max_changes", 1, 2**31)
    deadline = None if timeout is None else time.monotonic() + timeout
    return _poll(read, signature, signature(), read(), interval, deadline, max_changes)


def _poll(
    read: Callable[[], dict[str, str]],
    signature: Callable[[], object],
    sig: object,
    state: dict[str, str],
    interval: float,
    deadline: float | None,
    max_changes: int | None,
) -> Iterator[Change]:
    seen = 0
    while max_changes is None or seen < max_changes:
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return
        time.sleep(interval if deadline is None else min(interval, deadline - now))
        new_sig = signature()
        if new_sig == sig:
            continue
        sig = new_sig
        new_state = read()
        for change in diff(state, new_state):
            yield change
            seen += 1
            if max_changes is not None and seen >= max_changes:
                return
        state = new_state


def boot_time(proc_root: str = "/") -> float:
    """When this machine booted (``btime`` of ``/proc/stat``), in seconds since the epoch.

    Raises :class:`HvsockError` when ``/proc/stat`` cannot be read or has no btime.
    """
    path = os.path.join(proc_root, "proc", "stat")
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("btime "):
                    return float(line.split()[1])
    except (OSError, ValueError, IndexError) as exc:
        raise HvsockError(f"cannot read the boot time from {path}: {exc}") from exc
    raise HvsockError(f"{path} has no btime line; cannot tell whether a pool is stale")


# -- locks ---------------------------------------------------------------------------


def _try_fcntl(fd: int, exclusive: bool) -> bool:
    kind = fcntl.F_WRLCK if exclusive else fcntl.F_RDLCK
    try:
        if _OFD:
            fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, kind, os.SEEK_SET, 0, 0, 0))
        else:  # pragma: no cover - 32-bit or non-Linux
            fcntl.lockf(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock_fcntl(fd: int) -> None:
    if _OFD:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, struct.pack(_FLOCK, fcntl.F_UNLCK, os.SEEK_SET, 0, 0, 0))
    else:  # pragma: no cover - 32-bit or non-Linux
        fcntl.lockf(fd, fcntl.LOCK_UN)


def _try_flock(fd: int, exclusive: bool) -> bool:
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextlib.contextmanager
def locked(fd: int, *, exclusive: bool, timeout: float, where: str) -> Iterator[None]:
    """Hold both the fcntl and the flock lock of *fd* for the block.

    Raises :class:`KvpError` (errno ETIMEDOUT) when they are not granted in *timeout* s.
    """
    if fcntl is None:  # pragma: no cover - Windows
        raise UnsupportedError(
            "pool files need POSIX file locks; on Windows the pools are "
            "in the registry (RegistryKvpStore)"
        )
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        # One lock never waits while the other is held: no deadlock with a program
        # that takes them in the other order.
        if _try_flock(fd, exclusive):
            if _try_fcntl(fd, exclusive):
                break
            fcntl.flock(fd, fcntl.LOCK_UN)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise KvpError(
                f"{where} stayed locked for {timeout:g} s (hv_kvp_daemon, cloud-init or "
                "another writer holds it); retry, or raise the lock timeout (--lock-timeout)",
                errno=errno.ETIMEDOUT,
            )
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)
    try:
        yield
    finally:
        _unlock_fcntl(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)


def _pread_all(fd: int, size: int) -> bytes:
    chunks = []
    got = 0
    while got < size:
        chunk = os.pread(fd, size - got, got)
        if not chunk:
            break  # truncated meanwhile by a writer that takes no lock
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


# -- the store -----------------------------------------------------------------------


@dataclass(frozen=True)
class KvpStore:
    """One pool file: ``KvpStore(Pool.GUEST)`` is ``/var/lib/hyperv/.kvp_pool_1``.

    *directory* holds the pool files; *limits* is ``"safe"`` (what the host receives
    intact) or ``"full"`` (the on-disk sizes); writing any pool but GUEST needs
    *allow_host_pool* (those are the host's, or synthesised by the daemon).
    Keys compare exactly (byte for byte), as the daemon compares them.
    Every method raises :class:`KvpError` for a malformed file or a lock timeout,
    :class:`PermissionDeniedError` when the file's mode refuses this user, and
    :class:`ArgumentError` for a bad key or value (before anything is written).
    """

    pool: Pool = Pool.GUEST
    directory: str = DEFAULT_DIRECTORY
    limits: str = codec.SAFE
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    allow_host_pool: bool = False
    path: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pool", codec.parse_pool(self.pool))
        if not isinstance(self.directory, (str, os.PathLike)) or not str(self.directory):
            raise ArgumentError(f"directory must be a path, not {quote(self.directory)}")
        object.__setattr__(self, "directory", os.fspath(self.directory))
        codec.check_limits(self.limits)
        positive_number(self.lock_timeout, "lock_timeout")
        object.__setattr__(self, "path", os.path.join(self.directory, self.pool.file_name))

    @property
    def where(self) -> str:
        return f"KVP pool {int(self.pool)} ({self.pool.cli_name}, {self.path})"

    # -- opening ----------------------------------------------------------------------
    def _fail(self, exc: OSError, op: str) -> BaseException:
        return translate(
            exc,
            op=op,
            family="file",
            where=self.where,
            permission_hint="pool files belong to root (mode 0644): run as "
            "root, or use --dir for a directory of your own",
        )

    @contextlib.contextmanager
    def _open(self, *, write: bool) -> Iterator[int | None]:
        """The locked descriptor; None when reading a pool that does not exist."""
        if write and self.pool != Pool.GUEST and not self.allow_host_pool:
            raise ArgumentError(
                f"pool {int(self.pool)} ({self.pool.cli_name}) belongs to the host or the "
                "daemon; a guest program writes pool 1 (guest). To write it anyway pass "
                "allow_host_pool=True"
            )
        # O_NOFOLLOW: a symlink planted at the pool's name must not lead a root-run write
        # (clear truncates) to another file. O_NONBLOCK: opening a FIFO put there must not
        # wait for a writer forever; the fstat below then refuses it.
        flags = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
        try:
            if write:
                os.makedirs(self.directory, mode=0o755, exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | flags, 0o644)
            else:
                fd = os.open(self.path, os.O_RDONLY | flags)
        except FileNotFoundError:
            if write:
                raise self._fail(
                    FileNotFoundError(errno.ENOENT, "no such directory"), "create"
                ) from None
            yield None
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise self._not_a_file("a symbolic link") from None
            if exc.errno == errno.ENXIO:  # a FIFO with no reader, opened for writing
                raise self._not_a_file("a FIFO") from None
            if exc.errno == errno.EISDIR:
                raise self._not_a_file("a directory") from None
            raise self._fail(exc, "write" if write else "read") from exc
        try:
            kind = _kind(os.fstat(fd).st_mode)
            if kind is not None:
                raise self._not_a_file(kind)
            with locked(fd, exclusive=write, timeout=self.lock_timeout, where=self.where):
                yield fd
        except OSError as exc:
            if isinstance(exc, HvsockError):
                raise
            raise self._fail(exc, "write" if write else "read") from exc
        finally:
            os.close(fd)

    def _not_a_file(self, kind: str) -> KvpError:
        return KvpError(
            f"{self.where} is {kind}, not a regular file; hvsock neither follows "
            "nor writes through it: remove it (hv_kvp_daemon creates the pool "
            "files), or point --dir at the directory that holds the real pools",
            errno=errno.EINVAL,
        )

    def _data(self, fd: int | None) -> bytes:
        """The whole file, checked to be whole records; b"" when it does not exist."""
        if fd is None:
            return b""
        data = _pread_all(fd, os.fstat(fd).st_size)
        codec.check_size(len(data), self.where)
        return data

    # -- reading ----------------------------------------------------------------------
    def items(self) -> list[tuple[str, str]]:
        """Every record, in file order, duplicates kept; [] when the file does not exist."""
        with self._open(write=False) as fd:
            return codec.decode_pool(self._data(fd), self.where)

    def as_dict(self) -> dict[str, str]:
        """Key -> value, the last of duplicates winning (as the host reads them)."""
        return codec.latest(self.items())

    def keys(self) -> list[str]:
        return list(self.as_dict())

    def get(self, key: str, default: str | None = None) -> str | None:
        """The value of *key* (the last record with it), or *default*."""
        if not isinstance(key, str):
            raise ArgumentError(f"a KVP key must be text, not {type(key).__name__}")
        with self._open(write=False) as fd:
            data = self._data(fd)
        at = codec.find_key(data, key)
        if not at:
            return default
        return codec.decode_record(data[at[-1] * RECORD_SIZE : (at[-1] + 1) * RECORD_SIZE])[1]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.get(key) is not None

    def __len__(self) -> int:
        return len(self.as_dict())

    # -- writing ----------------------------------------------------------------------
    def set(self, key: str, value: str) -> None:
        """Set *key* to *value*: rewrite its record in place, or append one.

        Duplicates of *key* collapse into the first record (the later ones are removed).
        """
        self.update({key: value})

    def append(self, key: str, value: str) -> None:
        """Add a record at the end, even when *key* is already there (as cloud-init does)."""
        record = codec.encode_record(key, value, self.limits)
        with self._open(write=True) as fd:
            assert fd is not None
            count = codec.check_size(os.fstat(fd).st_size, self.where)
            _pwrite_all(fd, record, count * RECORD_SIZE)

    def update(self, items: dict[str, str]) -> None:
        """:meth:`set` each item, under one hold of the lock (all are checked first)."""
        encoded = [(k, codec.encode_record(k, v, self.limits)) for k, v in items.items()]
        with self._open(write=True) as fd:
            assert fd is not None
            for key, record in encoded:
                data = self._data(fd)
                at = codec.find_key(data, key)
                if not at:
                    _pwrite_all(fd, record, len(data))
                    continue
                if len(at) > 1:
                    self._remove(fd, data, set(at[1:]))
                offset = at[0] * RECORD_SIZE
                if data[offset : offset + RECORD_SIZE] != record:
                    _pwrite_all(fd, record, offset)

    def delete(self, key: str) -> int:
        """Remove every record of *key*; return how many there were (0: nothing to do)."""
        if not isinstance(key, str):
            raise ArgumentError(f"a KVP key must be text, not {type(key).__name__}")
        with self._open(write=True) as fd:
            assert fd is not None
            data = self._data(fd)
            at = codec.find_key(data, key)
            if at:
                self._remove(fd, data, set(at))
            return len(at)

    def clear(self) -> int:
        """Remove every record; return how many there were."""
        with self._open(write=True) as fd:
            assert fd is not None
            count = os.fstat(fd).st_size // RECORD_SIZE
            os.ftruncate(fd, 0)
            return count

    @staticmethod
    def _remove(fd: int, data: bytes, gone: AbstractSet[int]) -> None:
        # Move the records after the first removed one down, then cut the end: whole
        # records at record offsets only, so a reader never meets half of one. Records
        # move as raw bytes, so other programs' records stay exactly what they were.
        first = min(gone)
        tail = b"".join(
            data[i * RECORD_SIZE : (i + 1) * RECORD_SIZE]
            for i in range(first + 1, len(data) // RECORD_SIZE)
            if i not in gone
        )
        if tail:
            _pwrite_all(fd, tail, first * RECORD_SIZE)
        os.ftruncate(fd, first * RECORD_SIZE + len(tail))

    # -- watching and staleness --------------------------------------------------------
    def _signature(self) -> object:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def watch(
        self,
        *,
        interval: float = DEFAULT_WATCH_INTERVAL,
        timeout: float | None = None,
        max_changes: int | None = None,
    ) -> Iterator[Change]:
        """Yield each :class:`Change` to the pool as it happens (polling, see below).

        Looks at the file's stat every *interval* seconds and re-reads it when it
        changed: polling works on every file system (9p, NFS) and for every writer,
        and a stat is cheap. Ends after *timeout* seconds or *max_changes* changes;
        with neither it runs until the caller stops iterating. Raises
        :class:`ArgumentError` for a bad bound.
        """
        return poll_changes(
            self.as_dict,
            self._signature,
            interval=interval,
            timeout=timeout,
            max_changes=max_changes,
        )

    def modified(self) -> float | None:
        """The file's mtime (seconds since the epoch), or None when it does not exist."""
        try:
            return os.stat(self.path).st_mtime
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._fail(exc, "look at") from exc

    def is_stale(self, boot: float | None = None) -> bool:
        """True when the file was last written before this boot (*boot*: /proc/stat's btime).

        A pool from before the boot was shipped in an image or left by an earlier run
        (WALinuxAgent #3276: pool 3 naming an old host): nothing current wrote it.
        """
        mtime = self.modified()
        if mtime is None:
            return False
        return mtime < (boot_time() if boot is None else boot)


def _kind(mode: int) -> str | None:
    """What a pool path is when it is not a regular file (None when it is one)."""
    if stat.S_ISREG(mode):
        return None
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "a special file"


def open_pool(
    pool: Pool | int | str = Pool.GUEST,
    *,
    directory: str | os.PathLike[str] = DEFAULT_DIRECTORY,
    limits: str = codec.SAFE,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
    allow_host_pool: bool = False,
) -> KvpStore:
    """The pool file *pool* (a :class:`Pool`, number or name) in *directory*.

    Raises :class:`ArgumentError` for an unknown pool or a bad option.
    """
    return KvpStore(
        codec.parse_pool(pool), os.fspath(directory), limits, lock_timeout, allow_host_pool
    )


def stale_pools(
    directory: str = DEFAULT_DIRECTORY, *, boot: float | None = None, proc_root: str = "/"
) -> list[KvpStore]:
    """The non-empty pool files in *directory* last written before this boot."""
    when = boot_time(proc_root) if boot is None else boot
    return [
        store
        for store in (KvpStore(p, directory) for p in Pool)
        if store.is_stale(when) and os.path.getsize(store.path)
    ]


# -- host facts ------------------------------------------------------------------------

#: Pool 3's keys, by the attribute of :class:`HostFacts` that holds them.
HOST_FACT_KEYS = {
    "host_name": "HostName",
    "physical_host_name": "PhysicalHostName",
    "physical_host_name_fqdn": "PhysicalHostNameFullyQualified",
    "vm_name": "VirtualMachineName",
    "vm_id": "VirtualMachineId",
    "hosting_os_major": "HostingSystemOsMajor",
    "hosting_os_minor": "HostingSystemOsMinor",
    "hosting_edition_id": "HostingSystemEditionId",
    "hosting_sp_major": "HostingSystemSpMajor",
    "hosting_sp_minor": "HostingSystemSpMinor",
    "hosting_product_type": "HostingSystemProductType",
}


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return int(text.strip())
    return None


def _uuid(text: str | None) -> uuid.UUID | None:
    if text is None:
        return None
    with contextlib.suppress(ValueError):
        return uuid.UUID(text.strip().strip("{}"))
    return None


@dataclass(frozen=True)
class HostFacts:
    """What the host says about itself and this VM (pool 3, ``auto-external``).

    Every field is None when the host did not say it; *raw* keeps every item as read.
    Numbers and the VM id are parsed leniently: text that does not parse gives None
    (the text stays in *raw*).
    """

    host_name: str | None = None
    physical_host_name: str | None = None
    physical_host_name_fqdn: str | None = None
    vm_name: str | None = None
    vm_id: uuid.UUID | None = None
    hosting_os_major: int | None = None
    hosting_os_minor: int | None = None
    hosting_edition_id: int | None = None
    hosting_sp_major: int | None = None
    hosting_sp_minor: int | None = None
    hosting_product_type: int | None = None
    raw: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_items(cls, items: dict[str, str]) -> HostFacts:
        texts = {attr: items.get(key) for attr, key in HOST_FACT_KEYS.items()}
        return cls(
            host_name=texts["host_name"],
            physical_host_name=texts["physical_host_name"],
            physical_host_name_fqdn=texts["physical_host_name_fqdn"],
            vm_name=texts["vm_name"],
            vm_id=_uuid(texts["vm_id"]),
            **{attr: _int(texts[attr]) for attr in HOST_FACT_KEYS if attr.startswith("hosting_")},
            raw=dict(items),
        )

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {attr: getattr(self, attr) for attr in HOST_FACT_KEYS}
        out["vm_id"] = None if self.vm_id is None else str(self.vm_id)
        out["raw"] = dict(self.raw)
        return out


def host_info(
    directory: str | os.PathLike[str] = DEFAULT_DIRECTORY,
    *,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
) -> HostFacts:
    """The host facts of pool 3 in *directory* (all None when the pool is missing)."""
    store = KvpStore(Pool.AUTO_EXTERNAL, os.fspath(directory), lock_timeout=lock_timeout)
    return HostFacts.from_items(store.as_dict())
