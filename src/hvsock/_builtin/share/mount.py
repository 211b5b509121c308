"""Mount a 9P2000.L share in Linux: connect through hvsock, hand the socket to the kernel.

``mount -t 9p`` cannot open a VM socket itself; its ``trans=fd`` transport takes a
descriptor the caller already has, and the kernel keeps its own reference, so this
process may exit once mount(2) returns. Before handing the socket over, a Tversion
is exchanged here: a server that refuses the peer (its allowlist) or does not speak
9P2000.L is then a clear error instead of the kernel's bare EIO. The kernel sends its
own Tversion next, which starts the session afresh (9P allows it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import glob
import os
import socket
import sys
from collections.abc import Iterable
from typing import Any

from ..._core import ninep as p
from ..._endpoints import connect
from ..._errors import ArgumentError, HvsockError, PermissionDeniedError, UnsupportedError
from ..._transports import vsock as _vsock

__all__ = ["mount", "parse_options"]

#: The source name mount(8) and /proc/mounts show.
SOURCE = b"hvsock"
DEFAULT_MSIZE = 512 * 1024
# mount(2) flags for the generic options (include/uapi/linux/mount.h).
_FLAGS = {
    "ro": 1,
    "nosuid": 2,
    "nodev": 4,
    "noexec": 8,
    "sync": 16,
    "dirsync": 128,
    "noatime": 1024,
    "nodiratime": 2048,
    "relatime": 1 << 21,
}
_CLEARS = {"rw": "ro", "suid": "nosuid", "dev": "nodev", "exec": "noexec", "async": "sync"}
# fstab and mount(8) words that are not the filesystem's business.
_IGNORED = {
    "defaults",
    "nofail",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "_netdev",
    "group",
}
# Our own options: used here, never handed to v9fs.
_OURS = {"timeout", "retries"}
_TRANSPORT = {"trans", "rfdno", "wfdno", "version"}


def parse_options(options: str | Iterable[str]) -> tuple[int, dict[str, str | None]]:
    """mount(2) flags and the 9p options from ``-o`` text (``ro,msize=262144,cache=loose``).

    The transport options are this command's to set: giving them is an ArgumentError.
    """
    words = options.split(",") if isinstance(options, str) else list(options)
    flags = 0
    rest: dict[str, str | None] = {}
    for word in (w.strip() for w in words):
        if not word or word in _IGNORED or word.startswith(("x-", "comment=")):
            continue
        key, eq, value = word.partition("=")
        if key in _FLAGS and not eq:
            flags |= _FLAGS[key]
        elif key in _CLEARS and not eq:
            flags &= ~_FLAGS[_CLEARS[key]]
        elif key in _TRANSPORT:
            raise ArgumentError(f"-o {key}=... is set by hvsock mount itself; leave it out")
        elif "\0" in word:
            raise ArgumentError("a mount option holds a NUL byte")
        else:
            rest[key] = value if eq else None
    return flags, rest


def _modules_hint(root: str = "/") -> str:
    """What the kernel lacks for a 9p mount over an fd, as advice; "" when nothing.

    *root* is where ``proc``, ``sys`` and ``lib/modules`` are (``/``; a tree in tests).
    The fd transport is its own module, 9pnet_fd, since Linux 6.1 (part of 9pnet before):
    when its file is there but it is not loaded, v9fs answers trans=fd with a bare EINVAL
    (the kernel loads it on demand only where modprobe and modules.alias exist)."""
    missing = []
    try:
        with open(os.path.join(root, "proc/filesystems"), encoding="ascii", errors="replace") as f:
            if not any(line.split()[-1:] == ["9p"] for line in f):
                missing.append("9p")
    except OSError:
        pass
    loaded = os.path.join(root, "sys/module")
    shipped = glob.glob(
        os.path.join(root, "lib/modules", os.uname().release, "kernel/net/9p/9pnet_fd.ko*")
    )
    if not os.path.isdir(os.path.join(loaded, "9pnet_fd")) and (
        shipped or not os.path.isdir(os.path.join(loaded, "9pnet"))
    ):
        missing.append("9pnet_fd")
    if not missing:
        return ""
    return (
        f"; the kernel lacks {' and '.join(missing)}: load them with "
        f"`modprobe {' '.join(missing)}` (package: the kernel's extra modules)"
    )


def _handshake(sock: socket.socket, msize: int, timeout: float | None) -> None:
    sock.settimeout(timeout)
    sock.sendall(p.encode(p.Message(p.TVERSION, p.NOTAG, (msize, p.VERSION))))
    decoder = p.Decoder(max(msize, 8192))
    while True:
        try:
            data = sock.recv(8192)
        except TimeoutError:
            raise HvsockError(
                f"the share service did not answer 9P's Tversion in {timeout} s; is it a 9P server?"
            ) from None
        if not data:
            raise PermissionDeniedError(
                "the server closed the connection before answering: this machine is not "
                "on the share's allowlist (hvsock share --allow), or it is not a 9P server"
            )
        for reply in decoder.feed(data):
            if reply.type != p.RVERSION or reply.args[1] != p.VERSION:
                raise HvsockError(
                    f"the server answered {reply.name} {reply.args!r}, not "
                    "Rversion 9P2000.L: it does not speak 9P2000.L"
                )
            return


def mount(
    address: Any,
    mountpoint: str | os.PathLike[str],
    *,
    options: str | Iterable[str] = "",
    timeout: float | None = 5.0,
    retries: int = 0,
) -> None:
    """Mount the share at *address* on *mountpoint* (Linux, as root).

    *options* are mount -o words: ``ro``, ``msize=N``, ``cache=none|loose|fscache|mmap``,
    ``aname=EXPORT``, ``access=...`` and the generic flags (``nosuid``, ``noatime`` ...);
    fstab-only words (``defaults``, ``nofail``, ``_netdev``, ``x-systemd.*``) are ignored.
    Raises :class:`UnsupportedError` (not Linux, or 9p missing: the message names the
    modules), :class:`PermissionDeniedError` (not root, or the server refused),
    connection errors from :func:`hvsock.connect`, :class:`ArgumentError`.
    """
    if not sys.platform.startswith("linux"):
        raise UnsupportedError("hvsock mount needs Linux (its kernel's 9p client)")
    flags, rest = parse_options(options)
    for key in _OURS:
        rest.pop(key, None)
    msize_text = rest.pop("msize", None) or str(DEFAULT_MSIZE)
    if not msize_text.isdigit() or not 4096 <= int(msize_text) <= 1 << 20:
        raise ArgumentError(f"msize={msize_text}: give bytes from 4096 to 1048576")
    msize = int(msize_text)
    target = os.fsencode(mountpoint)
    if not os.path.isdir(target):
        raise ArgumentError(f"mount point {os.fsdecode(target)!r} is not a directory")
    sock = connect(address, timeout=timeout, retries=retries)
    try:
        # Room for two whole replies: with vsock's default 256 KiB a reply of a bigger
        # msize stalls at every credit update (the kernel keeps this size).
        _vsock.ensure_buffer_size(sock, 2 * msize)
        _handshake(sock, msize, timeout)
        sock.settimeout(None)  # the kernel drives the socket from here, blocking
        fd = sock.fileno()
        data = f"trans=fd,rfdno={fd},wfdno={fd},version=9p2000.L,msize={msize}"
        for key, value in rest.items():
            data += f",{key}" if value is None else f",{key}={value}"
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if libc.mount(SOURCE, target, b"9p", ctypes.c_ulong(flags), data.encode()) != 0:
            code = ctypes.get_errno()
            raise _mount_error(code, os.fsdecode(target))
    finally:
        sock.close()  # the kernel holds its own reference on success


def _mount_error(code: int, where: str) -> HvsockError:
    text = f"mount of the share on {where} failed: {os.strerror(code)}"
    if code == errno.EPERM:
        return PermissionDeniedError(
            f"{text}; mounting needs root (CAP_SYS_ADMIN): run it with sudo", errno=code
        )
    hint = _modules_hint()
    if hint:
        return UnsupportedError(text + hint, errno=code)
    if code == errno.ENOENT:
        return HvsockError(
            f"{text}; the server has no export of that name (check -o aname=)", errno=code
        )
    if code == errno.EINVAL:
        return ArgumentError(f"{text}; the kernel refused the options (see dmesg)", errno=code)
    if code in (errno.EIO, errno.ECONNRESET, errno.EPIPE, errno.EACCES):
        return PermissionDeniedError(f"{text}; the server refused the attach", errno=code)
    return HvsockError(text, errno=code)
