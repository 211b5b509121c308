"""Port forwarding: ``Relay`` accepts on one address and forwards to another, any kinds.

:mod:`.config` checks the settings (and reads ``relay.toml`` through the servers'
one TOML loader), :mod:`.facade` is the public ``Relay`` (binding, readiness, stop,
on the servers' one lifecycle), :mod:`.loop` is one worker's event loop,
:mod:`.conn` one connection's state and the counters, :mod:`.workers` the worker
processes and their supervisor, :mod:`.datapath` moves the bytes (splice on Linux,
a copy loop elsewhere), :mod:`.dial` connects to the target without blocking the loop.
"""

from .config import Forward, RelayConfig, TargetRule
from .conn import ConnectionRecord, RelayStats
from .facade import Relay, relay

__all__ = [
    "ConnectionRecord",
    "Forward",
    "Relay",
    "RelayConfig",
    "RelayStats",
    "TargetRule",
    "relay",
]
