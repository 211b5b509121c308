"""File copy between host and VM: the service (``file_service``) and the client (``copy``)."""

from .client import CopyResult, copy, copy_async
from .server import DEFAULT_PORT, file_service

__all__ = ["DEFAULT_PORT", "CopyResult", "copy", "copy_async", "file_service"]
