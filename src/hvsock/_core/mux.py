"""The agent's service hello: several built-ins on one address, sans I/O.

When one listening address carries several services (``hvsock agent --listen
ADDR --enable exec,info``), the client's first frame names the one it wants and
the agent answers before either side says anything else::

    client -> agent   {"hvsock": 1, "service": "exec"}
    agent -> client   {"ok": true}                                  then the service's protocol
                      {"ok": false, "error": {"code", "message"}}   then the agent closes

Both are ordinary hvsock frames holding a JSON object, so the same length check
and decoder apply. The client must wait for the answer before sending more:
nothing of the service's own protocol is read before the agent has chosen.
An address that carries one service (its own port in the config) skips the hello.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .._errors import ProtocolError, RemoteError

__all__: list[str] = []  # internal: the public names live in hvsock.__init__

VERSION = 1
#: A service name on the wire: what the agent's catalogue uses.
NAME = re.compile(r"[a-z][a-z0-9_-]{0,31}")
#: Largest hello either side sends or accepts.
MAX_HELLO = 4096


def _load(body: bytes, what: str) -> dict[str, Any]:
    try:
        obj = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(
            f"the {what} is not UTF-8 JSON; is this an hvsock agent "
            "address that carries several services?"
        ) from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"the {what} must be a JSON object")
    return obj


def encode_hello(service: str) -> bytes:
    """The client's first frame body, naming *service*."""
    if not isinstance(service, str) or not NAME.fullmatch(service):
        raise ProtocolError(f"service name {service!r:.40} is not like 'exec' or 'info'")
    return json.dumps({"hvsock": VERSION, "service": service}).encode()


def decode_hello(body: bytes) -> str:
    """The service a hello names; :class:`ProtocolError` for anything else."""
    obj = _load(body, "service hello")
    if obj.get("hvsock") != VERSION:
        raise ProtocolError(
            f"service hello of an unknown version {obj.get('hvsock')!r:.20}; "
            f"this agent speaks version {VERSION}"
        )
    name = obj.get("service")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ProtocolError(f"service hello names no valid service ({name!r:.40})")
    return name


def encode_answer(error: tuple[str, str] | None = None) -> bytes:
    """The agent's answer: ok, or ``(code, message)``."""
    if error is None:
        return b'{"ok":true}'
    return json.dumps({"ok": False, "error": {"code": error[0], "message": error[1]}}).encode()


def decode_answer(body: bytes) -> None:
    """Return when the agent said ok; raise :class:`RemoteError` with its reason otherwise."""
    obj = _load(body, "agent's answer to the service hello")
    if obj.get("ok") is True:
        return
    err = obj.get("error")
    if (
        obj.get("ok") is False
        and isinstance(err, dict)
        and isinstance(err.get("code"), str)
        and isinstance(err.get("message"), str)
    ):
        raise RemoteError(err["code"], err["message"])
    raise ProtocolError("the agent's answer to the service hello is malformed")
