"""The KVP exchange where there is no Hyper-V (KVM/QEMU, Firecracker): a vsock service.

The guest runs :func:`kvp_service` (``hvsock kvp serve``): it keeps the pools in the same
files and format as ``hv_kvp_daemon``, so a program written against Hyper-V's pools works
unchanged. The host connects with :class:`KvpClient` (``hvsock kvp --vm vsock://3 ...``):
it reads any pool, mostly the guest's pool 1, and writes only its own pools, 0
(external) and 3 (auto-external): the same split as Hyper-V's.

Protocol: hvsock's framed JSON RPC (:func:`hvsock.rpc_handler`). Methods, each with a
``pool`` number: ``items`` -> ``[[key, value], ...]`` (file order, duplicates kept),
``get`` {key} -> value or null, ``update`` {items: {key: value}} -> null,
``delete`` {key} -> count, ``clear`` -> count. Error codes: ``bad_argument``,
``pool_not_writable`` (a write to a pool that is not the host's), ``kvp_error``,
``permission_denied``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from ..._core import kvp as codec
from ..._core.addresses import Address, parse_address
from ..._core.ids import CID_HOST, PARENT
from ..._core.kvp import Pool
from ..._endpoints import connect
from ..._errors import (
    AddressError,
    ArgumentError,
    ConnectTimeoutError,
    HvsockError,
    KvpError,
    PeerClosedError,
    PermissionDeniedError,
    ProtocolError,
    RemoteError,
)
from ..._service.connection import Connection
from ..._service.declaration import Limits, Service
from ..._service.frames import RpcClient
from ..._service.rpc import rpc_handler
from .store import DEFAULT_DIRECTORY, HostFacts, KvpStore

#: The service's vsock port (and so its Hyper-V template service id). 5010: clear of
#: hvsock's examples (5000-5002) and of QEMU's guest agent's usual ports.
KVP_PORT = 5010
#: Only the host may connect by default: CID 2 (the host, or the VMM of a Firecracker
#: or Cloud Hypervisor guest) and, for a Windows guest, the Hyper-V parent partition.
DEFAULT_ALLOW: frozenset[object] = frozenset({CID_HOST, PARENT})
#: The pools the host writes.
HOST_POOLS = (Pool.EXTERNAL, Pool.AUTO_EXTERNAL)
#: Most items one ``update`` takes (Hyper-V's own calls take 128).
MAX_UPDATE = 1024

_ERROR_CODES: list[tuple[type[Exception], str]] = [
    (ArgumentError, "bad_argument"),
    (PermissionDeniedError, "permission_denied"),
    (OSError, "kvp_error"),
]


def _pool(params: Any, *, write: bool) -> Pool:
    if not isinstance(params, dict):
        raise RemoteError("bad_argument", "params must be an object with a pool number")
    try:
        pool = codec.parse_pool(params.get("pool", int(Pool.GUEST)))
    except ArgumentError as exc:
        raise RemoteError("bad_argument", str(exc)) from None
    if write and pool not in HOST_POOLS:
        raise RemoteError(
            "pool_not_writable",
            f"pool {int(pool)} ({pool.cli_name}) is the guest's; "
            "the host writes pools 0 (external) and 3 (auto-external)",
        )
    return pool


def _text(params: dict[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str):
        raise RemoteError("bad_argument", f"{name} must be a string")
    return value


def kvp_service(
    *,
    port: int = KVP_PORT,
    pool_dir: str | os.PathLike[str] = DEFAULT_DIRECTORY,
    allow: object = DEFAULT_ALLOW,
    name: str = "hvsock kvp",
    limits: Limits | None = None,
) -> Service:
    """The guest side of the KVP exchange: pools in *pool_dir*, served on *port*.

    *allow* lists who may connect (default: the host only, see :data:`DEFAULT_ALLOW`);
    ``None`` lets everyone in. Raises :class:`ArgumentError` for a bad argument.
    """
    directory = os.fspath(pool_dir)

    def store(pool: Pool) -> KvpStore:
        # The host pools are written on the host's behalf: that is this service's job.
        return KvpStore(pool, directory, allow_host_pool=True)

    async def run(fn: Callable[[], Any]) -> Any:
        try:
            return await asyncio.to_thread(fn)
        except OSError as exc:  # hvsock's errors are OSErrors too
            code = next(c for cls, c in _ERROR_CODES if isinstance(exc, cls))
            raise RemoteError(code, str(exc)) from None

    async def items(conn: Connection, params: Any) -> Any:
        pool = _pool(params, write=False)
        return [list(item) for item in await run(store(pool).items)]

    async def get(conn: Connection, params: Any) -> Any:
        pool = _pool(params, write=False)
        key = _text(params, "key")
        return await run(lambda: store(pool).get(key))

    async def update(conn: Connection, params: Any) -> Any:
        pool = _pool(params, write=True)
        pairs = params.get("items")
        if not isinstance(pairs, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in pairs.items()
        ):
            raise RemoteError("bad_argument", "items must be an object of strings")
        if len(pairs) > MAX_UPDATE:
            raise RemoteError("bad_argument", f"at most {MAX_UPDATE} items a call")
        conn.log.info("%s sets %d item(s) in pool %d", conn.peer, len(pairs), pool)
        await run(lambda: store(pool).update(pairs))
        return None

    async def delete(conn: Connection, params: Any) -> Any:
        pool = _pool(params, write=True)
        key = _text(params, "key")
        return await run(lambda: store(pool).delete(key))

    async def clear(conn: Connection, params: Any) -> Any:
        pool = _pool(params, write=True)
        return await run(store(pool).clear)

    handler = rpc_handler(
        {"items": items, "get": get, "update": update, "delete": delete, "clear": clear}
    )
    return Service(name, port, handler, allow=allow, limits=limits or Limits())


_REMOTE_ERRORS: dict[str, type[HvsockError]] = {
    "bad_argument": ArgumentError,
    "pool_not_writable": ArgumentError,
    "permission_denied": PermissionDeniedError,
    "kvp_error": KvpError,
}


class KvpClient:
    """The host side: a guest's pools over its KVP service.

    ``KvpClient("vsock://3")`` (port 5010 when the address has none) or any address
    hvsock connects to. The connection opens on first use; close it with :meth:`close`
    or ``with``. Raises hvsock's connect errors, :class:`ArgumentError` for a refused
    argument or a write to a guest pool, :class:`KvpError` /
    :class:`PermissionDeniedError` as the guest reports them, :class:`ProtocolError`
    when the peer is not a KVP service.
    """

    def __init__(self, address: str | Address, *, timeout: float = 10.0, retries: int = 0) -> None:
        self.address = with_default_port(address)
        self.timeout = timeout
        self.retries = retries
        self._rpc: RpcClient | None = None

    def __enter__(self) -> KvpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._rpc is not None:
            self._rpc.close()
            self._rpc = None

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        if self._rpc is None:
            sock = connect(self.address, timeout=self.timeout, retries=self.retries)
            sock.settimeout(self.timeout)
            self._rpc = RpcClient(sock)
        try:
            return self._rpc.call(method, params)
        except RemoteError as exc:
            cls = _REMOTE_ERRORS.get(exc.code)
            if cls is None:
                raise
            raise cls(f"the guest's KVP service: {exc.remote_message}") from exc
        except TimeoutError as exc:
            self.close()
            raise ConnectTimeoutError(
                f"the KVP service at {self.address} did not answer {method!r} within "
                f"{self.timeout:g} s"
            ) from exc
        except (ProtocolError, ConnectionError) as exc:
            # A service closes a peer outside its allowlist before reading a byte.
            self.close()
            if isinstance(exc, ProtocolError) and not isinstance(exc, PeerClosedError):
                raise
            raise HvsockError(
                f"the KVP service at {self.address} closed the connection without an "
                "answer: is this host allowed (`hvsock kvp serve --allow`, by default the "
                "host's CID 2 only)?"
            ) from exc

    def items(self, pool: Pool | int | str = Pool.GUEST) -> list[tuple[str, str]]:
        got = self._call("items", {"pool": int(codec.parse_pool(pool))})
        if not isinstance(got, list) or not all(
            isinstance(i, list) and len(i) == 2 and all(isinstance(s, str) for s in i) for i in got
        ):
            raise ProtocolError("the KVP service answered items with something else")
        return [(k, v) for k, v in got]

    def as_dict(self, pool: Pool | int | str = Pool.GUEST) -> dict[str, str]:
        return codec.latest(self.items(pool))

    def get(self, key: str, pool: Pool | int | str = Pool.GUEST) -> str | None:
        got = self._call("get", {"pool": int(codec.parse_pool(pool)), "key": key})
        if got is not None and not isinstance(got, str):
            raise ProtocolError("the KVP service answered get with something else")
        return got

    def update(self, items: dict[str, str], pool: Pool | int | str = Pool.EXTERNAL) -> None:
        """Set *items* in the guest's *pool* (0 or 3); checked here first (safe limits)."""
        target = codec.parse_pool(pool)
        for key, value in items.items():
            codec.check_item(key, value)
        self._call("update", {"pool": int(target), "items": dict(items)})

    def set(self, key: str, value: str, pool: Pool | int | str = Pool.EXTERNAL) -> None:
        self.update({key: value}, pool)

    def delete(self, key: str, pool: Pool | int | str = Pool.EXTERNAL) -> int:
        return int(self._call("delete", {"pool": int(codec.parse_pool(pool)), "key": key}))

    def clear(self, pool: Pool | int | str = Pool.EXTERNAL) -> int:
        return int(self._call("clear", {"pool": int(codec.parse_pool(pool))}))

    def host_info(self) -> HostFacts:
        return HostFacts.from_items(self.as_dict(Pool.AUTO_EXTERNAL))


def with_default_port(address: str | Address) -> Address:
    """*address* parsed; ``vsock://3`` (no port) gets the KVP port.

    Raises :class:`AddressError` when it is not an address.
    """
    if not isinstance(address, str):
        return address
    try:
        return parse_address(address)
    except AddressError:
        if address.startswith(("vsock://", "hybrid://", "tcp://")) and address.count(":") in (1, 2):
            try:
                return parse_address(f"{address.rstrip('/')}:{KVP_PORT}")
            except AddressError:
                pass
        raise
