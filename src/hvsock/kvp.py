"""Key/value exchange (Hyper-V "Data Exchange", KVP) from Python.

On a Linux guest the pools are files kept by ``hv_kvp_daemon``; hvsock reads and writes
them beside it, taking the locks the daemon and cloud-init take::

    import hvsock.kvp as kvp

    guest = kvp.open_pool()                  # pool 1, /var/lib/hyperv/.kvp_pool_1
    guest.set("ProvisioningState", "ready")  # what the host sees in GuestExchangeItems
    print(kvp.host_info().vm_name)           # pool 3: what the host says about this VM

On a Windows guest the same API works over the registry (:class:`RegistryKvpStore`).
On KVM or Firecracker, where there is no KVP, :func:`kvp_service` serves the same pools
over vsock and :class:`KvpClient` reaches them from the host.

Importing this module does not import asyncio: :func:`kvp_service` and
:class:`KvpClient` load the service framework when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._builtin.kvp.registry import POOL_KEYS, KvpRegistry, RegistryKvpStore, registry_host_info
from ._builtin.kvp.store import (
    DEFAULT_DIRECTORY,
    DEFAULT_LOCK_TIMEOUT,
    Change,
    HostFacts,
    KvpStore,
    boot_time,
    host_info,
    open_pool,
    stale_pools,
)
from ._core.kvp import (
    FULL,
    KEY_SIZE,
    RECORD_SIZE,
    SAFE,
    SAFE_KEY_UNITS,
    SAFE_VALUE_UNITS,
    VALUE_SIZE,
    Pool,
    check_item,
    decode_pool,
    decode_record,
    encode_pool,
    encode_record,
    parse_pool,
)

if TYPE_CHECKING:
    from ._builtin.kvp.service import KVP_PORT, KvpClient, kvp_service

__all__ = [
    "DEFAULT_DIRECTORY",
    "DEFAULT_LOCK_TIMEOUT",
    "FULL",
    "KEY_SIZE",
    "KVP_PORT",
    "POOL_KEYS",
    "RECORD_SIZE",
    "SAFE",
    "SAFE_KEY_UNITS",
    "SAFE_VALUE_UNITS",
    "VALUE_SIZE",
    "Change",
    "HostFacts",
    "KvpClient",
    "KvpRegistry",
    "KvpStore",
    "Pool",
    "RegistryKvpStore",
    "boot_time",
    "check_item",
    "decode_pool",
    "decode_record",
    "encode_pool",
    "encode_record",
    "host_info",
    "kvp_service",
    "open_pool",
    "parse_pool",
    "registry_host_info",
    "stale_pools",
]

_LAZY = ("KVP_PORT", "KvpClient", "kvp_service")
#: Errors this module re-exported until 0.2; their one home is the top of hvsock.
_MOVED_ERRORS = ("ArgumentError", "HvsockError", "KvpError", "PermissionDeniedError")


def __getattr__(name: str) -> Any:
    # The service side needs the framework (and asyncio); load it on first use only.
    if name in _LAZY:
        from ._builtin.kvp import service

        value = getattr(service, name)
        globals()[name] = value
        return value
    if name in _MOVED_ERRORS:
        from . import _errors
        from ._moved import deprecated

        deprecated(__name__, name, "hvsock", stacklevel=2)
        return getattr(_errors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
