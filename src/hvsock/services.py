"""The services hvsock ships, to host in your own ``ServiceHost``, and the tools that load them.

:func:`echo_service` (the peer of :func:`ping` and :func:`stress`), :func:`file_service`
(the peer of ``hvsock.copy``) and :func:`share_service` (9P2000.L, the peer of
``hvsock mount``) each return a ``Service``. :class:`BenchServer` is the peer of
``hvsock bench``; :func:`ping` measures round trips, :func:`stress` sends random payloads
and checks every byte that comes back. (The KVP service is ``hvsock.kvp.kvp_service``.)
"""

from ._builtin.bench import BenchResult, BenchServer
from ._builtin.echo import ECHO_PORT, PingStats, echo_service, ping
from ._builtin.files.server import file_service
from ._builtin.share.server import share_service
from ._builtin.stress import StressFailure, StressResult, stress

__all__ = [
    "ECHO_PORT",
    "BenchResult",
    "BenchServer",
    "PingStats",
    "StressFailure",
    "StressResult",
    "echo_service",
    "file_service",
    "ping",
    "share_service",
    "stress",
]
