"""Test doubles that carry real bytes, for hvsock's tests and yours.

:class:`HybridVsockMuxer` emulates the host side of a Firecracker / Cloud
Hypervisor VMM's vsock device over real Unix sockets, so hybrid-vsock code can be
tested without a VM. :class:`MemoryRegistry` holds registry keys and values in
memory with Windows' rules, so service registration can be tested anywhere.
"""

from .._server.muxer import HybridVsockMuxer
from .._windows.memory_registry import MemoryRegistry

__all__ = ["HybridVsockMuxer", "MemoryRegistry"]
