"""Fake machines for the doctor: a directory tree standing in for ``/`` and a fake
AF_VSOCK socket maker, so that the host tier creates no real AF_VSOCK socket on the
machine it runs on (its vsock may lead to a real hypervisor)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from hvsock._doctor import Machine

from .fakes import FakeRunner

#: /proc/net/protocols with and without the AF_VSOCK family (real lines, trimmed).
PROTOCOLS_HEAD = (
    "protocol  size sockets  memory press maxhdr  slab module     cl co di ac io "
    "in de sh ss gs se re sp bi br ha uh gp em\n"
)
PROTOCOLS = {
    True: PROTOCOLS_HEAD + "AF_VSOCK  1240      0      -1   NI       0   yes  vsock      "
    "y  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n\nUNIX      1024     42      -1   "
    "NI       0   yes  kernel     n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n\n",
    False: PROTOCOLS_HEAD + "UNIX      1024     42      -1   NI       0   yes  kernel     "
    "n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n  n\n",
}


class FakeVsock:
    """Makes fake AF_VSOCK stream sockets: counts them, records binds; a port in *busy*
    is in use; *error* (an errno) makes every socket() fail as the kernel would."""

    def __init__(self, *, busy: tuple[int, ...] = (), error: int | None = None) -> None:
        self.busy = set(busy)
        self.error = error
        self.made = 0
        self.open = 0
        self.bound: list[tuple[int, int]] = []

    def __call__(self) -> FakeVsockSocket:
        self.made += 1
        if self.error is not None:
            raise OSError(self.error, os.strerror(self.error))
        self.open += 1
        return FakeVsockSocket(self)


class FakeVsockSocket:
    def __init__(self, maker: FakeVsock) -> None:
        self.maker = maker
        self.closed = False

    def bind(self, address: tuple[int, int], /) -> None:
        if address[1] in self.maker.busy:
            raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
        self.maker.bound.append(address)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.maker.open -= 1


def tree(
    root: Path,
    *,
    modules: tuple[str, ...] = (),
    vmbus: bool = False,
    dmi: tuple[str, str] | None = None,
    osrelease: str = "6.1.0-13-amd64",
    dev_vsock: bool = False,
    registered: bool | None = True,
    vsock: FakeVsock | None = None,
    euid: int | None = None,
) -> Machine:
    """A Linux machine: /sys/module lists *modules* (plus vsock itself when
    *registered*); /proc/net/protocols lists AF_VSOCK when *registered* (None: no
    such file); sockets come from *vsock* (a new FakeVsock by default)."""
    for module in (("vsock",) if registered else ()) + modules:
        (root / "sys" / "module" / module).mkdir(parents=True)
    if vmbus:
        (root / "sys" / "bus" / "vmbus").mkdir(parents=True)
    if dmi is not None:
        (root / "sys" / "class" / "dmi" / "id").mkdir(parents=True)
        (root / "sys" / "class" / "dmi" / "id" / "sys_vendor").write_text(dmi[0] + "\n")
        (root / "sys" / "class" / "dmi" / "id" / "product_name").write_text(dmi[1] + "\n")
    (root / "proc" / "sys" / "kernel").mkdir(parents=True)
    (root / "proc" / "sys" / "kernel" / "osrelease").write_text(osrelease + "\n")
    if registered is not None:
        (root / "proc" / "net").mkdir(parents=True)
        (root / "proc" / "net" / "protocols").write_text(PROTOCOLS[registered])
    if dev_vsock:
        (root / "dev").mkdir()
        (root / "dev" / "vsock").write_text("not a device")
    return Machine(
        root=str(root), runner=FakeRunner(), vsock_socket=vsock or FakeVsock(), euid=euid
    )
