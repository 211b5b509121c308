"""Transports: how each address kind is connected and listened on.

One connect algorithm per transport, written once as a sans-I/O generator in
:mod:`.dial` (its :data:`~.dial.TRANSPORTS` table is the one dispatch on the address
kind); :mod:`.sync` drives it blocking, :mod:`hvsock._aio.drive` on asyncio and
:mod:`hvsock._relay.dial` on the relay's poll loop. One module per family for
what is not a connect (``vsock``, ``hyperv``, ``hybrid``, ``stream`` for TCP/Unix:
listening, options, messages). Every function hands back a real ``socket.socket``;
addresses come resolved (VM names are looked up one layer up, in
:mod:`hvsock._endpoints`).
"""
