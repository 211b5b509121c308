"""The relay's readiness poller: epoll where the OS has it, ``selectors`` elsewhere.

Level-triggered, and addressed by file descriptor with small integer masks, so the
data path's per-event cost is one dict lookup. A mask of 0 keeps an epoll
registration quiet (epoll still reports hang-ups and errors on it).
"""

from __future__ import annotations

import contextlib
import os
import select
import selectors
import socket
import time
from collections.abc import Callable

HAVE_EPOLL = hasattr(select, "epoll")

IN: int = select.EPOLLIN if HAVE_EPOLL else 1
OUT: int = select.EPOLLOUT if HAVE_EPOLL else 4
ERR: int = select.EPOLLERR if HAVE_EPOLL else 8
HUP: int = select.EPOLLHUP if HAVE_EPOLL else 16


class Poller:
    """``add``/``modify``/``remove`` descriptors with IN/OUT masks; ``poll`` the ready ones."""

    def __init__(self) -> None:
        self._epoll = select.epoll() if HAVE_EPOLL else None
        self._selector: selectors.BaseSelector | None = (
            None if HAVE_EPOLL else selectors.DefaultSelector()
        )
        self._masks: dict[int, int] = {}
        if self._epoll is not None:
            self.poll: Callable[[float | None], list[tuple[int, int]]] = self._poll_epoll
        else:
            self.poll = self._poll_selector

    def add(self, fd: int, mask: int) -> None:
        self._masks[fd] = mask
        if self._epoll is not None:
            self._epoll.register(fd, mask)
        elif mask:
            assert self._selector is not None
            self._selector.register(fd, self._sel_events(mask))

    def modify(self, fd: int, mask: int) -> None:
        old = self._masks[fd]
        self._masks[fd] = mask
        if self._epoll is not None:
            self._epoll.modify(fd, mask)
            return
        assert self._selector is not None
        if old and mask:
            self._selector.modify(fd, self._sel_events(mask))
        elif mask:
            self._selector.register(fd, self._sel_events(mask))
        elif old:
            self._selector.unregister(fd)

    def remove(self, fd: int) -> None:
        old = self._masks.pop(fd, None)
        if old is None:
            return
        with contextlib.suppress(OSError, KeyError, ValueError):
            if self._epoll is not None:
                self._epoll.unregister(fd)
            elif old:
                assert self._selector is not None
                self._selector.unregister(fd)

    def forget(self, fd: int) -> None:
        """Drop *fd* that is about to be closed: epoll drops a closed descriptor by
        itself, so this spares a system call there."""
        if self._epoll is not None:
            self._masks.pop(fd, None)
        else:
            self.remove(fd)

    def __contains__(self, fd: int) -> bool:
        return fd in self._masks

    def _poll_epoll(self, timeout: float | None) -> list[tuple[int, int]]:
        assert self._epoll is not None
        return self._epoll.poll(-1 if timeout is None else timeout)

    def _poll_selector(self, timeout: float | None) -> list[tuple[int, int]]:
        assert self._selector is not None
        if not self._masks or not any(self._masks.values()):
            # selectors cannot wait on nothing everywhere (Windows select() fails).
            if timeout:
                time.sleep(min(timeout, 0.05))
            return []
        ready = self._selector.select(timeout)
        out = []
        for key, events in ready:
            mask = (IN if events & selectors.EVENT_READ else 0) | (
                OUT if events & selectors.EVENT_WRITE else 0
            )
            out.append((int(key.fd), mask))
        return out

    @staticmethod
    def _sel_events(mask: int) -> int:
        return (selectors.EVENT_READ if mask & IN else 0) | (
            selectors.EVENT_WRITE if mask & OUT else 0
        )

    def close(self) -> None:
        if self._epoll is not None:
            self._epoll.close()
        if self._selector is not None:
            self._selector.close()
        self._masks.clear()


class Waker:
    """Wakes a poll from another thread (or a signal handler): a socket pair, portable."""

    def __init__(self) -> None:
        self._r, self._w = socket.socketpair()
        self._r.setblocking(False)
        self._w.setblocking(False)

    def fileno(self) -> int:
        return self._r.fileno()

    def wake(self) -> None:
        # Full means a wake-up is already pending; closed means nobody waits.
        with contextlib.suppress(BlockingIOError, OSError):
            self._w.send(b"\0")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while self._r.recv(4096):
                pass

    def close(self) -> None:
        self._r.close()
        self._w.close()


class SpareCpu:
    """Whether the machine has a CPU to spare right now, for the busy-poll.

    Spinning pays only while the peer that will answer runs on another, otherwise
    idle CPU; when every CPU has a runnable task, the spin takes the time slice
    the peers (clients, targets, the other workers) need to produce what it waits
    for. Linux: the runnable count of ``/proc/loadavg`` (instantaneous, this task
    included) against the CPUs this process may use, read at most once per
    :data:`SPARE_CPU_EVERY` seconds (~3 us a read). Elsewhere, or when the file
    cannot be read: always True (spin as configured).
    """

    def __init__(self, path: str = "/proc/loadavg", cpus: int | None = None) -> None:
        self._fd = -1
        with contextlib.suppress(OSError, AttributeError):
            self._cpus = len(os.sched_getaffinity(0)) if cpus is None else cpus
            self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._next = 0.0
        self._spare = True

    def __call__(self, now: float) -> bool:
        if self._fd < 0 or now < self._next:
            return self._spare
        self._next = now + SPARE_CPU_EVERY
        try:
            # "0.52 0.58 0.59 3/250 12345": the fourth field is runnable/total.
            running = int(os.pread(self._fd, 128, 0).split()[3].split(b"/")[0])
        except (OSError, ValueError, IndexError):
            running = 0
        self._spare = running <= self._cpus
        return self._spare

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


#: Seconds between two looks at the machine's load (SpareCpu).
SPARE_CPU_EVERY = 0.001
