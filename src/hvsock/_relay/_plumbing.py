"""The server plumbing the relay shares with the service framework, imported in one place.

Peer identity, allow rules and readiness live with :mod:`hvsock._service` today;
they are moving to a shared home below both, so the relay names them only here.
"""

from __future__ import annotations

from .._service.connection import Peer, peer_of
from .._service.declaration import AllowRule
from .._service.declaration import _allow as check_allow
from .._service.ready import sd_notify, write_ready_file

__all__ = ["AllowRule", "Peer", "check_allow", "peer_of", "sd_notify", "write_ready_file"]
