"""The nested guest's (L2's) side of the hypervisor tier: a harness and its steps.

Python is slow to start in L2 (nested software emulation, its root over two layers of
9p: ~40 s for ``import socket``), so L2 runs one long-lived process,
:mod:`.harness`, that imports hvsock once and serves *steps* to the tests in L1 over
vsock, itself an ``hvsock.ServiceHost`` with an ``rpc_handler``. A step is a function
here in L2 that the tests call by name with keyword parameters; a *service kind* is a
factory of an ``hvsock.Service`` that the ``serve`` step hosts in L2 on a port L1 picks.

Adding a step or a service kind: put ``@step`` / ``@service_kind`` functions in a new
module of this package; the harness imports every module here at start. This module
and the harness import only the standard library and hvsock (no pytest: L2 has no
site-packages, ``python -S``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import traceback
from collections.abc import Callable
from typing import Any

import hvsock

#: The harness's RPC service in L2 (allowed: CID 2, the host, only).
HARNESS_PORT = 9999
#: L1 listens here; the harness connects once it serves, to say it is ready.
READY_PORT = 9998
#: An echo service the harness always hosts (it is back after every L2 boot).
ECHO_PORT = 9997
#: L2's CID (QEMU's ``-device vhost-vsock-pci,guest-cid=3`` in L1).
GUEST_CID = 3

Step = Callable[..., Any]
ServiceFactory = Callable[..., Any]

#: Steps by name: each takes keyword parameters and returns JSON-able data.
STEPS: dict[str, Step] = {}
#: Service kinds by name: each takes (port, **params) and returns an hvsock.Service.
SERVICE_KINDS: dict[str, ServiceFactory] = {}
#: The harness's always-on ServiceHosts ("harness" itself, "echo" on ECHO_PORT), by name.
BACKGROUND: dict[str, hvsock.ServiceHost] = {}


def step(fn: Step) -> Step:
    """Register *fn* as a step named after it. A plain function runs in a thread (it
    may block); an ``async`` one runs on the harness's event loop."""
    STEPS[fn.__name__] = fn
    return fn


def service_kind(fn: ServiceFactory) -> ServiceFactory:
    """Register *fn* (``(port, **params) -> hvsock.Service``) as a kind ``serve`` hosts."""
    SERVICE_KINDS[fn.__name__] = fn
    return fn


def as_rpc_method(fn: Step) -> Callable[[Any, Any], Any]:
    """Adapt a step to ``rpc_handler``'s ``(conn, params)`` method form.

    A step that raises answers ``step_failed`` with its traceback, so a failure in L2
    reads in L1's test report as it would have here.
    """

    @functools.wraps(fn)
    async def method(conn: Any, params: Any) -> Any:
        kwargs = params if isinstance(params, dict) else {}
        try:
            if inspect.iscoroutinefunction(fn):
                return await fn(**kwargs)
            return await asyncio.to_thread(fn, **kwargs)
        except Exception as exc:
            raise hvsock.RemoteError(
                "step_failed",
                "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
            ) from exc

    return method


def payload(size: int, seed: int) -> bytes:
    """*size* reproducible bytes that differ per seed (both sides make the same ones)."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.sha512(f"{seed}:{block}".encode()).digest() * 32
        block += 1
    return bytes(out[:size])


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
