"""Where ``ServiceHost.run()`` says it listens when the program configured no logging.

The library never prints: it logs. But a script that only calls ``host.run()``
would show nothing at all (logging's last resort shows warnings only), so a
newcomer cannot tell that it listens. Only when logging is not configured at all
(no handler on the root logger or on ``hvsock``), ``run()`` hands hvsock's INFO
records to a stderr handler for as long as it runs, and removes it after.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

FORMAT = "%(name)s: %(message)s"


@contextmanager
def default_log_handler(name: str = "hvsock") -> Iterator[None]:
    """Log *name*'s INFO and above to stderr while inside, if logging is unconfigured."""
    logger = logging.getLogger(name)
    if logging.getLogger().handlers or logger.handlers:
        yield
        return
    handler = logging.StreamHandler()  # sys.stderr as it is when a record comes
    handler.setFormatter(logging.Formatter(FORMAT))
    level = logger.level
    logger.addHandler(handler)
    if level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
