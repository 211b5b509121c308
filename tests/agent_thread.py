"""An hvsock agent run in a background thread for host-tier tests, and small waits."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from hvsock._builtin.agent.config import AgentConfig
from hvsock._builtin.agent.host import Agent, build_agent


class AgentThread:
    """``with AgentThread(config) as agent: ...``: serving once entered, stopped on exit."""

    def __init__(self, config: AgentConfig, **kwargs: Any) -> None:
        self._ready = threading.Event()
        self.agent: Agent = build_agent(config, on_ready=lambda _: self._ready.set(), **kwargs)
        self._loop = asyncio.new_event_loop()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self._loop.run_until_complete(self.agent.host.serve(handle_signals=False))
        except BaseException as exc:  # reported by __enter__/__exit__
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def __enter__(self) -> AgentThread:
        self._thread.start()
        assert self._ready.wait(30), "agent did not report ready"
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self.agent.host.request_stop)
        self._thread.join(30)
        assert not self._thread.is_alive(), "agent did not stop"

    def address(self, name: str = "hvsock agent") -> str:
        return str(self.agent.host.addresses[name])


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def process_gone(pid: int) -> bool:
    """True when *pid* no longer runs (gone, or a zombie nobody reaped yet)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True
    except OSError:
        return not os.path.exists(f"/proc/{pid}")
