"""Frames and the messages of the JSON RPC, for writing a protocol of your own.

A frame is a 4-byte big-endian length and that many bytes. :func:`encode_frame` and
:class:`FrameDecoder` are the pure halves (bytes in, frames out; no I/O);
:func:`send_frame` / :func:`recv_frame` move one frame over a blocking socket,
:func:`write_frame` / :func:`read_frame` over asyncio streams. :class:`Request`,
:class:`Response` and :class:`ErrorReply` are the messages ``rpc_handler`` and
``RpcClient`` exchange, as :func:`encode_message` / :func:`decode_message` spell them.
"""

from ._core.framing import (
    DEFAULT_MAX_FRAME,
    ErrorReply,
    FrameDecoder,
    Request,
    Response,
    decode_message,
    encode_frame,
    encode_message,
)
from ._service.frames import read_frame, recv_frame, send_frame, write_frame

__all__ = [
    "DEFAULT_MAX_FRAME",
    "ErrorReply",
    "FrameDecoder",
    "Request",
    "Response",
    "decode_message",
    "encode_frame",
    "encode_message",
    "read_frame",
    "recv_frame",
    "send_frame",
    "write_frame",
]
