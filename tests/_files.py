"""The file service in a background thread, for the host and kernel tiers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvsock
import hvsock.services


@contextlib.contextmanager
def hosting(service: hvsock.Service, address: str) -> Iterator[str]:
    """*service* on *address* in a ServiceHost on its own thread; yields its real address
    and stops it (within a wide bound) on the way out."""
    ready = threading.Event()
    found: dict[str, str] = {}

    def on_ready(addresses: dict[str, hvsock.Address]) -> None:
        found["address"] = str(addresses[service.name])
        ready.set()

    host = hvsock.ServiceHost(grace=1, on_ready=on_ready)
    host.add(service, address)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(
        target=lambda: loop.run_until_complete(host.serve(handle_signals=False)), daemon=True
    )
    thread.start()
    try:
        assert ready.wait(30), f"{service.name} did not start"
        yield found["address"]
    finally:
        loop.call_soon_threadsafe(host.request_stop)
        # A wide bound: on a busy machine the stop may take seconds, and closing a loop
        # still running would turn a passing test into an error.
        thread.join(120)
        assert not thread.is_alive(), f"{service.name} did not stop within 120 s"
        loop.close()


@contextlib.contextmanager
def serving(
    roots: list[Path], address: str, service: hvsock.Service | None = None, **options: Any
) -> Iterator[str]:
    """The file service on *address* in a thread (or *service*, built elsewhere);
    yields its real address."""
    with hosting(service or hvsock.services.file_service(roots, **options), address) as where:
        yield where
