"""A small blocking 9P2000.L client over the project's codec, and the share service in a
thread: the host tier drives the server with it, hostile messages included."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvsock
import hvsock.services
from hvsock._core import ninep as p
from tests._files import hosting


class Rlerror(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.errno = code


class Client:
    """One connection; ``rpc(T*, *args)`` sends with a fresh tag and returns the reply."""

    #: Clients not closed yet; :func:`sharing` closes them when it stops the server.
    live: list[Client] = []  # noqa: RUF012

    def __init__(self, path: str, msize: int = 65536) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        Client.live.append(self)
        self.sock.settimeout(30)
        self.sock.connect(path)
        self.decoder = p.Decoder(1 << 21)
        self.pending: list[p.Message] = []
        self.tag = 0
        if msize:
            reply = self.rpc(p.TVERSION, msize, p.VERSION, tag=p.NOTAG)
            self.msize = reply.args[0]

    def close(self) -> None:
        self.sock.close()

    def send(self, msg: p.Message) -> None:
        self.sock.sendall(p.encode(msg))

    def recv(self) -> p.Message | None:
        while not self.pending:
            data = self.sock.recv(1 << 20)
            if not data:
                return None
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def rpc(self, kind: int, *args: Any, tag: int | None = None) -> p.Message:
        if tag is None:
            self.tag = (self.tag + 1) % 0xFFFF
            tag = self.tag
        self.send(p.Message(kind, tag, args))
        reply = self.recv()
        assert reply is not None, "the server closed the connection"
        assert reply.tag == tag
        if reply.type == p.RLERROR:
            raise Rlerror(reply.args[0])
        assert reply.type == kind + 1, reply
        return reply

    def attach(self, fid: int = 0, aname: bytes = b"", uid: int = 0) -> p.Qid:
        qid: p.Qid = self.rpc(p.TATTACH, fid, p.NOFID, b"u", aname, uid).args[0]
        return qid

    def walk(self, fid: int, newfid: int, *names: bytes) -> tuple[p.Qid, ...]:
        qids: tuple[p.Qid, ...] = self.rpc(p.TWALK, fid, newfid, names).args[0]
        return qids


@contextlib.contextmanager
def sharing(dirs: Any, address: str, **options: Any) -> Iterator[str]:
    """The share service on *address* in a thread; yields its real address."""
    with hosting(hvsock.services.share_service(dirs, **options), address) as where:
        try:
            yield where
        finally:
            while Client.live:
                Client.live.pop().close()


def unix_path(address: str) -> str:
    return address.removeprefix("unix://")


def snapshot(top: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under *top* with its mode and content (links: their target)."""
    out = {}
    for path in sorted(top.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            body = str(path.readlink()).encode()
        elif path.is_file():
            body = path.read_bytes()
        else:
            body = b""
        out[str(path.relative_to(top))] = (st.st_mode, body)
    return out
