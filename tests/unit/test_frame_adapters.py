"""Frames and RPC over real sockets (socketpair) and real asyncio streams on them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hvsock import AsyncRpcClient, FrameTooLargeError, ProtocolError, RemoteError, RpcClient
from hvsock._core.framing import ABSOLUTE_MAX_FRAME, HEADER_SIZE
from hvsock.framing import (
    DEFAULT_MAX_FRAME,
    ErrorReply,
    Request,
    Response,
    decode_message,
    encode_frame,
    encode_message,
    read_frame,
    recv_frame,
    send_frame,
    write_frame,
)

pytestmark = pytest.mark.usefixtures("fd_baseline")

T = TypeVar("T")
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Answer = Callable[[Request], list[bytes] | None]


def header(length: int) -> bytes:
    return length.to_bytes(HEADER_SIZE, "big")


@contextlib.contextmanager
def sock_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(5)
        b.settimeout(5)
        yield a, b


def read_to_eof(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- sync: send_frame / recv_frame -----------------------------------------------


@pytest.mark.parametrize("payload", [b"", b"a", b"\x00" * 4, bytes(range(256)) * 40])
def test_send_and_recv_one_frame(payload: bytes) -> None:
    with sock_pair() as (a, b):
        send_frame(b, payload)
        assert recv_frame(a) == payload


def test_frames_in_sequence_then_clean_eof() -> None:
    with sock_pair() as (a, b):
        for payload in [b"one", b"", b"three"]:
            send_frame(b, payload)
        b.shutdown(socket.SHUT_WR)
        assert [recv_frame(a) for _ in range(4)] == [b"one", b"", b"three", None]
        assert recv_frame(a) is None


def test_largest_default_frame_crosses_the_socket_in_pieces() -> None:
    # Bigger than the socket buffers, so the sender must run while we read.
    payload = bytes(range(256)) * (DEFAULT_MAX_FRAME // 256)
    with sock_pair() as (a, b):
        sender = threading.Thread(target=send_frame, args=(b, payload))
        sender.start()
        try:
            assert recv_frame(a) == payload
        finally:
            sender.join(5)


@settings(max_examples=50, deadline=None)
@given(payloads=st.lists(st.binary(max_size=512), max_size=8), data=st.data())
def test_any_split_of_the_byte_stream_reads_back(
    payloads: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(encode_frame(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10), label="cuts"))
    with sock_pair() as (a, b):
        for start, end in itertools.pairwise([0, *cuts, len(stream)]):
            b.sendall(stream[start:end])
        b.shutdown(socket.SHUT_WR)
        got = []
        while (frame := recv_frame(a)) is not None:
            got.append(frame)
        assert got == payloads


def test_clean_eof_before_any_frame_is_none() -> None:
    with sock_pair() as (a, b):
        b.close()
        assert recv_frame(a) is None


@pytest.mark.parametrize(
    ("sent", "match"),
    [
        (b"\x00", r"middle of a frame \(1 of 4 bytes\)"),
        (b"\x00\x00\x00", r"middle of a frame \(3 of 4 bytes\)"),
        (header(10), "closed before a 10-byte frame body"),
        (header(10) + b"abc", r"middle of a frame \(3 of 10 bytes\)"),
        (header(10) + b"123456789", r"middle of a frame \(9 of 10 bytes\)"),
    ],
)
def test_eof_inside_a_frame_is_a_protocol_error(sent: bytes, match: str) -> None:
    with sock_pair() as (a, b):
        b.sendall(sent)
        b.shutdown(socket.SHUT_WR)
        with pytest.raises(ProtocolError, match=match):
            recv_frame(a)


@pytest.mark.parametrize(
    ("claim", "limit"),
    [(ABSOLUTE_MAX_FRAME, DEFAULT_MAX_FRAME), (DEFAULT_MAX_FRAME + 1, DEFAULT_MAX_FRAME), (17, 16)],
)
def test_oversized_header_leaves_the_body_unread(claim: int, limit: int) -> None:
    with sock_pair() as (a, b):
        b.sendall(header(claim) + b"body bytes")
        b.shutdown(socket.SHUT_WR)
        with pytest.raises(FrameTooLargeError, match=f"{claim}-byte frame, over the {limit}"):
            recv_frame(a, max_size=limit)
        assert read_to_eof(a) == b"body bytes"


def test_max_size_is_inclusive_over_a_socket() -> None:
    with sock_pair() as (a, b):
        send_frame(b, b"x" * 16, max_size=16)
        assert recv_frame(a, max_size=16) == b"x" * 16


def test_oversized_send_sends_nothing() -> None:
    with sock_pair() as (a, b):
        with pytest.raises(FrameTooLargeError, match="17 bytes is over the 16-byte frame limit"):
            send_frame(b, b"x" * 17, max_size=16)
        b.shutdown(socket.SHUT_WR)
        assert read_to_eof(a) == b""


@pytest.mark.parametrize("bad", [0, -1, ABSOLUTE_MAX_FRAME + 1])
def test_recv_frame_checks_max_size_before_reading(bad: int) -> None:
    with sock_pair() as (a, b):
        send_frame(b, b"kept")
        with pytest.raises(ValueError, match="max frame size"):
            recv_frame(a, max_size=bad)
        assert recv_frame(a) == b"kept"


# -- sync: RpcClient against a server thread -----------------------------------


class ServerThread:
    """Answers each request on its socket with the frame bodies *answer* returns.

    *answer* returning None closes the connection; so does the client's EOF.
    """

    def __init__(self, sock: socket.socket, answer: Answer) -> None:
        self.sock = sock
        self.answer = answer
        self.requests: list[Request] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            with self.sock:
                while (body := recv_frame(self.sock)) is not None:
                    request = decode_message(body)
                    assert isinstance(request, Request)
                    self.requests.append(request)
                    replies = self.answer(request)
                    if replies is None:
                        return
                    for reply in replies:
                        send_frame(self.sock, reply)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc


@contextlib.contextmanager
def rpc_server(answer: Answer) -> Iterator[tuple[RpcClient, ServerThread]]:
    client_sock, server_sock = socket.socketpair()
    client_sock.settimeout(5)
    server_sock.settimeout(5)
    server = ServerThread(server_sock, answer)
    server.thread.start()
    try:
        with client_sock:
            yield RpcClient(client_sock), server
    finally:
        server.thread.join(5)
    assert not server.thread.is_alive()
    assert server.error is None, server.error


def echo(request: Request) -> list[bytes]:
    return [
        encode_message(Response(request.id, {"method": request.method, "params": request.params}))
    ]


def test_call_returns_the_result() -> None:
    with rpc_server(echo) as (client, server):
        assert client.call("get", {"key": [1, "two"]}) == {
            "method": "get",
            "params": {"key": [1, "two"]},
        }
        assert client.call("ping") == {"method": "ping", "params": None}
    assert [(r.id, r.method) for r in server.requests] == [(1, "get"), (2, "ping")]


def test_error_reply_raises_remote_error_and_the_client_stays_usable() -> None:
    def answer(request: Request) -> list[bytes]:
        if request.method == "missing":
            return [encode_message(ErrorReply(request.id, "not_found", "no such key"))]
        return echo(request)

    with rpc_server(answer) as (client, _):
        with pytest.raises(RemoteError, match="not_found: no such key") as info:
            client.call("missing", {"key": "k"})
        assert info.value.code == "not_found"
        assert info.value.remote_message == "no such key"
        assert client.call("after")["method"] == "after"


def test_error_reply_with_null_id_is_a_remote_error() -> None:
    null_id_error = encode_message(ErrorReply(None, "busy", "try later"))
    with (
        rpc_server(lambda _: [null_id_error]) as (client, _),
        pytest.raises(RemoteError, match="busy: try later") as info,
    ):
        client.call("get")
    assert info.value.code == "busy"


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (lambda r: Response(r.id + 1, "x"), "response to request 2, expected 1"),
        (lambda r: Response(0, "x"), "response to request 0, expected 1"),
        (lambda r: ErrorReply(r.id + 5, "c", "m"), "error reply to request 6, expected 1"),
        (lambda r: Request(r.id, "back"), "expected a response, got a request"),
    ],
)
def test_wrong_reply_is_a_protocol_error(reply: Callable[[Request], Any], match: str) -> None:
    with (
        rpc_server(lambda r: [encode_message(reply(r))]) as (client, _),
        pytest.raises(ProtocolError, match=match),
    ):
        client.call("get")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"not json", "not UTF-8 JSON"),
        (b"[1]", "must be a JSON object"),
        (b'{"id":1}', "none of 'method', 'result', 'error'"),
    ],
)
def test_bad_reply_frame_is_a_protocol_error(body: bytes, match: str) -> None:
    with rpc_server(lambda _: [body]) as (client, _), pytest.raises(ProtocolError, match=match):
        client.call("get")


def test_oversized_reply_is_frame_too_large_and_its_body_stays_unread() -> None:
    with rpc_server(lambda _: [b"x" * 100]) as (client, _):
        client.max_size = 64
        with pytest.raises(FrameTooLargeError, match="100-byte frame, over the 64-byte limit"):
            client.call("get")
        # Our EOF ends the server; what is left in the socket is the whole body.
        client.sock.shutdown(socket.SHUT_WR)
        assert read_to_eof(client.sock) == b"x" * 100


def test_server_closing_before_answering_is_a_protocol_error() -> None:
    with (
        rpc_server(lambda _: None) as (client, server),
        pytest.raises(ProtocolError, match="closed the connection before answering 'get'"),
    ):
        client.call("get")
    assert [r.method for r in server.requests] == ["get"]


def test_unencodable_params_send_nothing() -> None:
    with rpc_server(echo) as (client, server):
        with pytest.raises(ProtocolError, match="cannot be sent as JSON"):
            client.call("get", {"x": float("nan")})
        assert client.call("next")["method"] == "next"
    assert [r.method for r in server.requests] == ["next"]


# -- async: read_frame / write_frame -------------------------------------------


def run(main: Callable[[], Awaitable[T]]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(main(), 10)

    return asyncio.run(bounded())


@contextlib.asynccontextmanager
async def stream_pair() -> AsyncIterator[tuple[Streams, Streams]]:
    a, b = socket.socketpair()
    writers: list[asyncio.StreamWriter] = []
    try:
        ra, wa = await asyncio.open_connection(sock=a)
        writers.append(wa)
        rb, wb = await asyncio.open_connection(sock=b)
        writers.append(wb)
        yield (ra, wa), (rb, wb)
    finally:
        for writer in writers:
            writer.close()
            await writer.wait_closed()
        a.close()
        b.close()


@pytest.mark.parametrize("payload", [b"", b"a", bytes(range(256)) * 40, bytes(DEFAULT_MAX_FRAME)])
def test_async_write_and_read_one_frame(payload: bytes) -> None:
    async def main() -> bytes | None:
        async with stream_pair() as ((ra, _), (_, wb)):
            # Concurrently: a 1 MiB write only drains while the other side reads.
            _, got = await asyncio.gather(write_frame(wb, payload), read_frame(ra))
            return got

    assert run(main) == payload


def test_async_frames_in_sequence_then_clean_eof() -> None:
    async def main() -> list[bytes | None]:
        async with stream_pair() as ((ra, _), (_, wb)):
            for payload in [b"one", b"", b"three"]:
                await write_frame(wb, payload)
            wb.write_eof()
            return [await read_frame(ra) for _ in range(5)]

    assert run(main) == [b"one", b"", b"three", None, None]


def test_async_bytes_arriving_one_at_a_time() -> None:
    async def main() -> list[bytes | None]:
        async with stream_pair() as ((ra, _), (_, wb)):

            async def trickle() -> None:
                for byte in encode_frame(b"hello") + encode_frame(b""):
                    wb.write(bytes([byte]))
                    await wb.drain()
                    await asyncio.sleep(0)  # a step for the reader: each byte alone
                wb.write_eof()

            task = asyncio.create_task(trickle())
            frames = [await read_frame(ra) for _ in range(3)]
            await task
            return frames

    assert run(main) == [b"hello", b"", None]


@pytest.mark.parametrize(
    ("sent", "match"),
    [
        (b"\x00", "middle of a frame header"),
        (b"\x00\x00\x00", "middle of a frame header"),
        (header(10), r"middle of a frame \(0 of 10 bytes\)"),
        (header(10) + b"abc", r"middle of a frame \(3 of 10 bytes\)"),
    ],
)
def test_async_eof_inside_a_frame_is_a_protocol_error(sent: bytes, match: str) -> None:
    async def main() -> None:
        async with stream_pair() as ((ra, _), (_, wb)):
            wb.write(sent)
            wb.write_eof()
            with pytest.raises(ProtocolError, match=match):
                await read_frame(ra)

    run(main)


def test_async_clean_eof_before_any_frame_is_none() -> None:
    async def main() -> bytes | None:
        async with stream_pair() as ((ra, _), (_, wb)):
            wb.write_eof()
            return await read_frame(ra)

    assert run(main) is None


@pytest.mark.parametrize(("claim", "limit"), [(ABSOLUTE_MAX_FRAME, DEFAULT_MAX_FRAME), (17, 16)])
def test_async_oversized_header_leaves_the_body_unread(claim: int, limit: int) -> None:
    async def main() -> bytes:
        async with stream_pair() as ((ra, _), (_, wb)):
            wb.write(header(claim) + b"body bytes")
            wb.write_eof()
            with pytest.raises(FrameTooLargeError, match=f"{claim}-byte frame, over the {limit}"):
                await read_frame(ra, max_size=limit)
            return await ra.read()

    assert run(main) == b"body bytes"


def test_async_oversized_write_writes_nothing() -> None:
    async def main() -> bytes:
        async with stream_pair() as ((ra, _), (_, wb)):
            with pytest.raises(FrameTooLargeError, match="17 bytes is over the 16-byte"):
                await write_frame(wb, b"x" * 17, max_size=16)
            await write_frame(wb, b"x" * 16, max_size=16)
            wb.write_eof()
            return await ra.read()

    assert run(main) == encode_frame(b"x" * 16)


# -- async: AsyncRpcClient -----------------------------------------------------


async def serve(streams: Streams, answer: Answer, seen: list[Request]) -> None:
    reader, writer = streams
    while (body := await read_frame(reader)) is not None:
        request = decode_message(body)
        assert isinstance(request, Request)
        seen.append(request)
        replies = answer(request)
        if replies is None:
            writer.close()
            return
        for reply in replies:
            await write_frame(writer, reply)
    writer.close()


def run_rpc(
    answer: Answer, client_side: Callable[[AsyncRpcClient], Awaitable[T]]
) -> tuple[T, list[Request]]:
    seen: list[Request] = []

    async def main() -> T:
        async with stream_pair() as ((ra, wa), server_streams):
            server = asyncio.create_task(serve(server_streams, answer, seen))
            client = AsyncRpcClient(ra, wa)
            try:
                return await client_side(client)
            finally:
                await client.aclose()
                await server

    return run(main), seen


def test_async_call_returns_the_result() -> None:
    async def calls(client: AsyncRpcClient) -> list[Any]:
        return [await client.call("get", {"key": 1}), await client.call("ping")]

    results, seen = run_rpc(echo, calls)
    assert results == [{"method": "get", "params": {"key": 1}}, {"method": "ping", "params": None}]
    assert [(r.id, r.method) for r in seen] == [(1, "get"), (2, "ping")]


def test_async_concurrent_calls_each_get_their_own_answer() -> None:
    async def calls(client: AsyncRpcClient) -> list[Any]:
        return list(await asyncio.gather(*(client.call(f"m{i}", i) for i in range(10))))

    results, seen = run_rpc(echo, calls)
    assert results == [{"method": f"m{i}", "params": i} for i in range(10)]
    assert sorted(r.id for r in seen) == list(range(1, 11))


def test_async_error_reply_raises_remote_error() -> None:
    def answer(request: Request) -> list[bytes]:
        if request.method == "missing":
            return [encode_message(ErrorReply(request.id, "not_found", "no such key"))]
        return echo(request)

    async def calls(client: AsyncRpcClient) -> tuple[RemoteError, Any]:
        with pytest.raises(RemoteError) as info:
            await client.call("missing")
        return info.value, await client.call("after")

    (error, after), _ = run_rpc(answer, calls)
    assert (error.code, error.remote_message) == ("not_found", "no such key")
    assert after["method"] == "after"


@pytest.mark.parametrize(
    ("reply", "match"),
    [
        (lambda r: Response(r.id + 1, "x"), "response to request 2, expected 1"),
        (lambda r: ErrorReply(r.id + 5, "c", "m"), "error reply to request 6, expected 1"),
        (lambda r: Request(r.id, "back"), "expected a response, got a request"),
    ],
)
def test_async_wrong_reply_is_a_protocol_error(reply: Callable[[Request], Any], match: str) -> None:
    async def calls(client: AsyncRpcClient) -> None:
        with pytest.raises(ProtocolError, match=match):
            await client.call("get")

    run_rpc(lambda r: [encode_message(reply(r))], calls)


def test_async_server_closing_before_answering_is_a_protocol_error() -> None:
    async def calls(client: AsyncRpcClient) -> None:
        with pytest.raises(ProtocolError, match="closed the connection before answering 'get'"):
            await client.call("get")

    _, seen = run_rpc(lambda _: None, calls)
    assert [r.method for r in seen] == ["get"]


def test_async_oversized_reply_is_frame_too_large() -> None:
    async def calls(client: AsyncRpcClient) -> None:
        client.max_size = 64
        with pytest.raises(FrameTooLargeError, match="100-byte frame, over the 64-byte limit"):
            await client.call("get")
        # The body was not consumed as a frame: it is still there to read raw.
        assert await client.reader.readexactly(100) == b"x" * 100

    run_rpc(lambda _: [b"x" * 100], calls)


def test_async_aclose_gives_the_server_a_clean_eof() -> None:
    async def calls(client: AsyncRpcClient) -> bool:
        await client.aclose()
        return client.writer.is_closing()

    closing, seen = run_rpc(echo, calls)
    assert closing
    assert seen == []


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_async_any_frames_round_trip(payloads: list[bytes]) -> None:
    async def main() -> list[bytes]:
        async with stream_pair() as ((ra, _), (_, wb)):
            for payload in payloads:
                await write_frame(wb, payload)
            wb.write_eof()
            got = []
            while (frame := await read_frame(ra)) is not None:
                got.append(frame)
            return got

    assert run(main) == payloads
