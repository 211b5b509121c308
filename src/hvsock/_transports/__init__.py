"""Transports: how each address kind is connected and listened on.

One module per family (``vsock``, ``hyperv``, ``hybrid``, ``stream`` for TCP/Unix);
:mod:`._dispatch` picks one by address type. Every function hands back a real
``socket.socket``.
"""
