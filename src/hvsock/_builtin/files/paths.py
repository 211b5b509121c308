"""Paths below a starting directory, opened one component at a time, no symlink followed.

Both sides of a file copy reach every file through :func:`open_dir` and
:func:`lstat_at`: ``O_NOFOLLOW`` on each component, so a symlink planted on the
way is never followed. :func:`show` and :func:`kind_name` name paths and file
kinds in messages.
"""

from __future__ import annotations

import contextlib
import os
import stat

from ..._core import filecopy as fc
from ..._errors import HvsockError, translate

__all__: list[str] = []


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: Opening a file to send: no symlink, no blocking on a FIFO, no controlling tty.
READ_FLAGS = (
    os.O_RDONLY
    | os.O_NOFOLLOW
    | os.O_CLOEXEC
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOCTTY", 0)
)


def kind_name(mode: int) -> str:
    """What a non-regular file is, for a message."""
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def show(raw: bytes) -> str:
    """A path for a message: undecodable bytes shown as escapes."""
    return raw.decode("utf-8", "backslashreplace")


def open_dir(
    start_fd: int,
    parts: tuple[bytes, ...],
    *,
    create: bool = False,
    what: bytes = b"",
    parents_hint: bool = False,
) -> int:
    """A new descriptor of the directory *parts* below *start_fd*, no symlink followed.

    *create* makes missing directories (mode 0777 less the umask). Raises
    :class:`HvsockError` naming the directory that is missing (and, with
    *parents_hint*, the ``--parents`` flag) or that is a symlink or a file.
    """
    fd = os.dup(start_fd)
    done = 0
    try:
        for part in parts:
            try:
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o777, dir_fd=fd)
                nxt = os.open(part, DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = nxt
            done += 1
        return fd
    except OSError as exc:
        os.close(fd)
        at = b"/".join(parts[: done + 1])
        if isinstance(exc, FileNotFoundError):
            raise HvsockError(
                f"directory {show(at)!r} does not exist"
                + (f" (for {show(what)!r})" if what and what.strip(b"/") != at else "")
                + ("; --parents creates missing directories" if parents_hint else ""),
                errno=exc.errno,
            ) from exc
        raise translate(exc, op="open directory", family="file", where=repr(show(at))) from exc


def lstat_at(dir_fd: int, name: bytes) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def entry_of(st: os.stat_result, path: bytes, link: bytes = b"") -> fc.Entry:
    kind = (
        fc.KIND_DIR
        if stat.S_ISDIR(st.st_mode)
        else fc.KIND_SYMLINK
        if stat.S_ISLNK(st.st_mode)
        else fc.KIND_FILE
    )
    return fc.Entry(
        path,
        kind,
        stat.S_IMODE(st.st_mode),
        st.st_mtime_ns,
        st.st_size if kind == fc.KIND_FILE else 0,
        st.st_uid,
        st.st_gid,
        link,
    )
