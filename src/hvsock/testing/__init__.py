"""Test doubles that carry real bytes, for hvsock's tests and yours.

:class:`HybridVsockMuxer` emulates the host side of a Firecracker / Cloud
Hypervisor VMM's vsock device over real Unix sockets, so hybrid-vsock code can be
tested without a VM.
"""

from ._muxer import HybridVsockMuxer

__all__ = ["HybridVsockMuxer"]
