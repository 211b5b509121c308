"""The server plumbing the relay shares with the service framework (hvsock._server)."""

from __future__ import annotations

from .._server.lifecycle import check_ready_file, sd_notify, write_ready_file
from .._server.peers import AllowRule, Peer, peer_of
from .._server.peers import allow_rules as check_allow

__all__ = ["AllowRule", "Peer", "check_allow", "check_ready_file", "peer_of", "sd_notify",
           "write_ready_file"]
