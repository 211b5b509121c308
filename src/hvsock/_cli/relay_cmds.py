"""Port forwarding and load tools (relay, bench, stress). Filled in by issue 5."""

from __future__ import annotations

import argparse

from .args import Handler


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, Handler]:
    """Add this module's sub-commands to *sub*; return their handlers by name."""
    return {}
