"""Port forwarding (``hvsock relay``) from Python: accept on one address, forward to another.

:class:`Relay` (or the one-call :func:`relay`) forwards any address kind to any other,
each :class:`Forward` with its allowlist and :class:`TargetRule` s; :class:`RelayConfig`
is the validated configuration (``RelayConfig.from_toml`` reads ``relay.toml``);
:class:`RelayStats` and :class:`ConnectionRecord` are what a running relay reports.
See docs/port-forwarding.md.
"""

from ._relay import ConnectionRecord, Forward, Relay, RelayConfig, RelayStats, TargetRule, relay

__all__ = [
    "ConnectionRecord",
    "Forward",
    "Relay",
    "RelayConfig",
    "RelayStats",
    "TargetRule",
    "relay",
]
