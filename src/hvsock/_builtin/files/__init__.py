"""File copy between host and VM: the service (``file_service``) and the client (``copy``)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__all__ = ["DEFAULT_PORT", "CopyResult", "copy", "copy_async", "file_service"]

#: Where each name lives: loaded on first use, so ``hvsock cp`` (the client)
#: does not import the service and its framework, nor the service the client.
_HOME = {"CopyResult": ".client", "copy": ".client", "copy_async": ".client",
         "DEFAULT_PORT": ".server", "file_service": ".server"}


def __getattr__(name: str) -> object:
    """Import the module that defines *name* on first use, and keep the name here."""
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from .client import CopyResult as CopyResult
    from .client import copy as copy
    from .client import copy_async as copy_async
    from .server import DEFAULT_PORT as DEFAULT_PORT
    from .server import file_service as file_service
