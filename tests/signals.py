"""Children that a test sends signals to start with those signals at their defaults.

A script's background job (``cmd &``, nohup) starts with SIGINT and SIGQUIT ignored,
and an ignored disposition survives fork and exec: a child of such a test run would
never see the SIGINT its test sends (issue 25: one ``hvsock listen`` stayed alive for
1.5 hours). Wrapping the command sets the dispositions in the child itself, whatever
the test run inherited; a Python handler never survives exec, so only SIG_IGN matters.
"""

from __future__ import annotations

import signal
import sys

#: The signals tests send to their children.
SENT = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)

# Runs in the child, then replaces itself with the command (same pid, so Popen's
# send_signal and wait reach the command itself).
_TRAMPOLINE = (
    "import os, signal, sys\n"
    "for number in map(int, sys.argv[1].split(',')):\n"
    "    signal.signal(number, signal.SIG_DFL)\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def with_default_signals(argv: list[str]) -> list[str]:
    """``argv`` run with SIGINT, SIGQUIT and SIGTERM at their defaults."""
    return [sys.executable, "-S", "-c", _TRAMPOLINE, ",".join(str(int(s)) for s in SENT), *argv]
