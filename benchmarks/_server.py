"""Servers for bench_services.py, run in their own process so clients don't share its GIL.

usage: _server.py {hvsock|stdlib|blocking}[-uvloop] UNIX_DIR READY_FILE [trace]

Serves, on UNIX_DIR/echo.sock a byte echo, on UNIX_DIR/rpc.sock a framed echo
(hvsock: an rpc_handler method; stdlib: the same frames echoed raw), and on
UNIX_DIR/idle.sock connections that just wait. UNIX_DIR/stats.sock answers one
line: the traced Python heap in bytes (with "trace": tracemalloc slows everything,
so speed runs go without it) and the number of idle connections. "blocking" serves
only the byte echo, with a thread per connection and blocking sockets.
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
import sys
import threading
import tracemalloc
from pathlib import Path

import hvsock
import hvsock.services

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

IDLE: set[object] = set()


async def stats(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(f"{tracemalloc.get_traced_memory()[0]} {len(IDLE)}\n".encode())
    await writer.drain()
    writer.close()


async def main_hvsock(d: str, ready: str) -> None:
    async def idle(conn: hvsock.Connection) -> None:
        IDLE.add(conn)
        try:
            await conn.read()
        finally:
            IDLE.discard(conn)

    limits = hvsock.Limits(max_connections=5000, idle_timeout=None)
    host = hvsock.ServiceHost(grace=1)
    host.add(hvsock.services.echo_service(limits=limits), f"unix://{d}/echo.sock")
    host.add(
        hvsock.Service("rpc", 8, hvsock.rpc_handler({"echo": lambda c, p: p}), limits=limits),
        f"unix://{d}/rpc.sock",
    )
    host.add(hvsock.Service("idle", 9, idle, limits=limits), f"unix://{d}/idle.sock")
    server = await asyncio.start_unix_server(stats, path=f"{d}/stats.sock")
    host.on_ready = lambda addresses: Path(ready).write_text(json.dumps(addresses, default=str))
    async with server:
        await host.serve()


async def main_stdlib(d: str, ready: str) -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def frames(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                header = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(header, "big"))
                writer.write(header + body)
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def idle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        IDLE.add(writer)
        try:
            await reader.read()
        finally:
            IDLE.discard(writer)
            writer.close()

    servers = [
        await asyncio.start_unix_server(echo, path=f"{d}/echo.sock", backlog=1024),
        await asyncio.start_unix_server(frames, path=f"{d}/rpc.sock", backlog=1024),
        await asyncio.start_unix_server(idle, path=f"{d}/idle.sock", backlog=1024),
        await asyncio.start_unix_server(stats, path=f"{d}/stats.sock"),
    ]
    Path(ready).write_text("{}")  # noqa: ASYNC240 - a two-byte file, once at start
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main_blocking(d: str, ready: str) -> None:
    def echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)

    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(f"{d}/echo.sock")
    listener.listen(1024)
    Path(ready).write_text("{}")
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    mode, directory, ready_file = sys.argv[1:4]
    if sys.argv[4:] == ["trace"]:
        tracemalloc.start()
    try:
        if mode == "blocking":
            main_blocking(directory, ready_file)
        else:
            kind, _, loop = mode.partition("-")
            coro = (main_hvsock if kind == "hvsock" else main_stdlib)(directory, ready_file)
            if loop == "uvloop":
                import uvloop

                uvloop.run(coro)
            else:
                asyncio.run(coro)
    except KeyboardInterrupt:
        pass
