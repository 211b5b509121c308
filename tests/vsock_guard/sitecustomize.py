"""The host tier's AF_VSOCK guard for the Python processes a test starts.

tests/conftest.py puts this directory first on ``PYTHONPATH`` for the unit and host
tiers, so every child Python (``hvsock doctor`` as a subprocess, say) loads it at
start-up. Creating an AF_VSOCK socket in such a child then ends it at once with
status 97 and a line on stderr, unless ``HVSOCK_HOST_VSOCK`` is true-ish: on a VM
whose vsock leads to a real hypervisor the host tier must not touch AF_VSOCK.

It uses an audit hook (the ``socket.__new__`` event), so nothing is imported here
and nothing of hvsock is patched. Any other ``sitecustomize`` further down the path
still runs.
"""

from __future__ import annotations

import os
import sys

EXIT_STATUS = 97
AF_VSOCK = 40  # socket.AF_VSOCK on Linux, without importing socket at start-up


def _allowed() -> bool:
    return os.environ.get("HVSOCK_HOST_VSOCK", "").strip().lower() in {"1", "true", "yes", "on"}


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event == "socket.__new__" and len(args) > 1 and args[1] == AF_VSOCK:
        sys.stderr.write(
            f"tests/vsock_guard: pid {os.getpid()} ({' '.join(sys.argv)[:200]}) created an "
            "AF_VSOCK socket in the unit/host tier; that belongs in the kernel tier, or set "
            "HVSOCK_HOST_VSOCK=1 to allow it on this machine\n"
        )
        sys.stderr.flush()
        os._exit(EXIT_STATUS)


def _chain() -> None:
    """Run the next ``sitecustomize`` on the path, which this module shadows."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


if sys.platform.startswith("linux") and not _allowed():
    sys.addaudithook(_hook)
_chain()
