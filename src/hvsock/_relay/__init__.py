"""Port forwarding: ``Relay`` accepts on one address and forwards to another, any kinds.

:mod:`.engine` runs the poll loop and the connection lifecycle, :mod:`.datapath`
moves the bytes (splice on Linux, a copy loop elsewhere), :mod:`.dial` connects
to the target without blocking the loop.
"""

from .engine import ConnectionRecord, Relay, RelayStats, relay

__all__ = ["ConnectionRecord", "Relay", "RelayStats", "relay"]
