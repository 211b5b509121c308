"""Progress for long CLI runs (cp, bench, stress): a tqdm bar with the ``cli`` extra
(``pip install hvsock[cli]``), plain lines on stderr without it; on a terminal only
(:func:`wanted`), never drawn into a pipe or a log."""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from collections.abc import Callable, Iterator

# Not typing.TYPE_CHECKING (see args.py): `hvsock cp` imports this module.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

#: Seconds between two plain progress lines.
PLAIN_EVERY = 1.0

Update = Callable[[int, "int | None"], None]


def wanted(err: TextIO, off: bool) -> bool:
    """Whether a command shows progress on *err*: only when it is a terminal (a bar in
    a pipe or a log is noise), and not when *off* (``--no-progress``, ``--json``)."""
    if off:
        return False
    try:
        return err.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


@contextlib.contextmanager
def progress_bar(err: TextIO, enabled: bool, desc: str, unit: str = "it") -> Iterator[Update]:
    """A ``progress(done, total)`` callback showing progress on *err* while inside.

    Off when not *enabled* (stderr is not a terminal). A tqdm bar where tqdm is
    installed; otherwise a line such as ``hvsock: stress: 120/1000 it`` each second.
    """
    tqdm = None
    if enabled:  # tqdm takes a while to import: only for a bar that will show
        with contextlib.suppress(ImportError):
            tqdm = importlib.import_module("tqdm").tqdm
    if tqdm is None:
        with _plain(err, enabled, desc, unit) as update:
            yield update
        return
    bar = tqdm(
        desc=desc, file=err, unit=unit, unit_scale=unit == "B", leave=False, dynamic_ncols=True
    )
    lock = threading.Lock()

    def update_bar(done: int, total: int | None) -> None:
        with lock:
            if total is not None and bar.total != total:
                bar.total = total
            bar.update(done - bar.n)

    try:
        yield update_bar
    finally:
        bar.close()


@contextlib.contextmanager
def _plain(err: TextIO, enabled: bool, desc: str, unit: str) -> Iterator[Update]:
    lock = threading.Lock()
    last = [time.monotonic()]

    def update(done: int, total: int | None) -> None:
        if not enabled:
            return
        with lock:
            now = time.monotonic()
            if now - last[0] < PLAIN_EVERY and done != total:
                return
            last[0] = now
            of = f"/{total}" if total is not None else ""
            err.write(f"hvsock: {desc}: {done}{of} {unit}\n")
            err.flush()

    yield update
