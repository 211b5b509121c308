"""Every shell command in README.md and docs/*.md, and how the tests run it: one table.

``tests/host/test_doc_snippets.py`` runs the HOST ones (over Unix and TCP sockets),
``tests/kernel/test_doc_snippets_kernel.py`` the KERNEL ones (AF_VSOCK, in the test
VM, always to CID 1), and NOT ones say why they cannot run in either place. A test
checks that the table and the docs list the same commands, so a new snippet must
be entered here, and nothing is skipped without its reason.

Commands are keyed by their text with a trailing ``# comment`` removed. Where a
snippet names a fixed path or port (``/tmp/echo.sock``, ``7000``) the runners put
a temporary one in its place; that is the only change, unless a row says more.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHELL_LANGS = ("sh", "bash", "shell", "console")

HOST = "host"
KERNEL = "kernel"
NOT = "not runnable"


@dataclass(frozen=True)
class Snippet:
    file: str
    command: str


def doc_files() -> list[str]:
    return ["README.md", *sorted(os.path.relpath(p, ROOT)
                                 for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def strip_comment(line: str) -> str:
    """*line* without a trailing ``  # comment`` (a '#' outside quotes, after a space)."""
    quote = ""
    for i, c in enumerate(line):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1] == " "):
            return line[:i].rstrip()
    return line.rstrip()


def extract() -> list[Snippet]:
    """Each command line of each shell block, in the order the docs have them."""
    found = []
    for name in doc_files():
        with open(os.path.join(ROOT, name), encoding="utf-8") as f:
            text = f.read()
        for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
            if block.group(1) not in SHELL_LANGS:
                continue
            for line in block.group(2).splitlines():
                command = strip_comment(line.strip())
                if command:
                    found.append(Snippet(name, command))
    return found


_SSH = "needs an SSH server in a guest; the `hvsock connect` it runs is covered by the " \
       "connect snippets"
_CID2 = "dials the host (CID 2): only a real guest has one; in the test VM CID 2 would " \
        "leave the VM"
_WINDOWS = "Windows host only (AF_HYPERV / the registry)"
_OUTPUT = "sample output shown in the block, not a command"

#: command -> (how, reason or what the runner checks). One row per distinct command.
TABLE: dict[str, tuple[str, str]] = {
    # README: set-up
    "./scripts/demo": (NOT, "sets up .venv (and may apt-get install); the `hvsock demo` it "
                       "runs is a HOST row"),
    "./scripts/test": (NOT, "is the whole test suite itself"),
    # README: the command line
    "hvsock service-id 2761": (HOST, "prints 00000ac9-facb-11e6-bd58-64006a7986d3"),
    "hvsock port 00000ac9-facb-11e6-bd58-64006a7986d3": (HOST, "prints 2761"),
    "hvsock addr hvsock://parent/2761": (HOST, "explains, exit 0"),
    "hvsock cid": (HOST, "the /dev/vsock ioctl, no connect: exit 0, or 3 without vsock"),
    "hvsock connect vsock://3:22": (KERNEL, "to CID 1 and a listener's port in the VM"),
    "ssh -o ProxyCommand='hvsock connect vsock://3:22' user@vm": (NOT, _SSH),
    "hvsock listen vsock://any:5000": (KERNEL, "a client from CID 1 in the VM"),
    "hvsock listen unix:///run/agent.sock --exec 'my-handler'":
        (HOST, "a temporary path, `tr a-z A-Z` as the handler; a client's bytes come back"),
    "hvsock demo": (HOST, "exit 0, 'ok'"),
    "hvsock echo-server vsock://any:7007": (KERNEL, "with the ping row, port chosen in the VM"),
    "hvsock ping vsock://2:7007 -c 100 --json": (KERNEL, "CID 1 for CID 2 in the VM"),
    "hvsock register \"My agent\" --port 5000":
        (HOST, "off Windows: exit 3, pointing to --export (the Windows tier registers)"),
    "hvsock services": (HOST, "off Windows: exit 3 with the reason"),
    "hvsock vms": (HOST, "off Windows: exit 3 with the reason"),
    "hvsock connect hvsock://name:MyVM/5000": (HOST, "off Windows: exit 3 with the reason"),
    "hvsock doctor vsock://host:5000": (HOST, "never connects: exit 0 or 1, a report"),
    "hvsock selftest --json": (HOST, "JSON report; connects vsock only where vsock_loopback "
                               "is loaded (then the kernel tier runs it)"),
    "hvsock relay tcp://127.0.0.1:2222 vsock://3:22": (KERNEL, "to CID 1 in the VM"),
    "hvsock stress unix:///tmp/echo.sock -n 1000 -P 100":
        (HOST, "scaled down to -n 100 -P 20, against the echo-server row"),
    # docs/cli.md
    "ssh -o ProxyCommand='hvsock connect hybrid:///run/fc/v.sock:22' user@microvm": (NOT, _SSH),
    # docs/port-forwarding.md
    "hvsock relay vsock://any:2222 tcp://127.0.0.1:22 --allow 2":
        (NOT, "its one allowed peer is the host (CID 2): only a real guest gets connections "
         "from there"),
    "ssh -o ProxyCommand='hvsock connect vsock://3:2222' user@guest": (NOT, _SSH),
    "ssh -o ProxyCommand='hvsock connect hvsock://name:MyVM/2222' user@vm": (NOT, _SSH),
    "ssh -o ProxyCommand='hvsock connect hybrid:///run/fc/v.sock:2222' user@microvm":
        (NOT, _SSH),
    "hvsock relay tcp://127.0.0.1:2222 vsock://3:2222": (KERNEL, "to CID 1 in the VM"),
    "ssh -p 2222 user@127.0.0.1": (NOT, _SSH),
    "hvsock relay unix://$XDG_RUNTIME_DIR/agent.sock vsock://host:5010 &": (NOT, _CID2),
    "export SSH_AUTH_SOCK=$XDG_RUNTIME_DIR/agent.sock": (NOT, "part of the row above"),
    "hvsock relay vsock://any:3128 tcp://127.0.0.1:3128 --allow 3 --allow 4":
        (NOT, "its allowed peers are guests 3 and 4: only a real host has them"),
    "hvsock relay hvsock://wildcard/3128 tcp://127.0.0.1:3128": (NOT, _WINDOWS),
    "hvsock relay hybrid:///run/fc/v.sock:3128 tcp://127.0.0.1:3128":
        (HOST, "a guest's connection arrives on <uds>_3128 and reaches a TCP echo server"),
    "hvsock relay tcp://127.0.0.1:3128 vsock://host:3128": (NOT, _CID2),
    "export http_proxy=http://127.0.0.1:3128": (NOT, "part of the row above"),
    "hvsock bench server tcp://127.0.0.1:7000 &": (HOST, "the bench recipe, in order"),
    "hvsock bench client tcp://127.0.0.1:7000": (HOST, "the bench recipe"),
    "hvsock relay tcp://127.0.0.1:7001 tcp://127.0.0.1:7000 &": (HOST, "the bench recipe"),
    "hvsock bench client tcp://127.0.0.1:7001 --tests throughput,rtt --duration 5 --json":
        (HOST, "the bench recipe, through the relay; --duration 1"),
    "hvsock echo-server unix:///tmp/echo.sock &": (HOST, "the stress recipe"),
    "hvsock stress unix:///tmp/echo.sock -n 1000 -P 100 --max-size 256K":
        (HOST, "the stress recipe, scaled down to -n 100 -P 20"),
    "FAILED connection 17 (seed 4821, 90112 bytes; sent 90112, got 90112): what came back "
    "differs from what was sent": (NOT, _OUTPUT),
    "replay: hvsock stress unix:///tmp/echo.sock --connections 1 --min-size 0 --max-size "
    "262144 --max-chunk 65536 --seed 4821": (HOST, "the replay line runs as a command too"),
    # docs/services.md
    "python examples/kv_service.py": (NOT, "listens on vsock://any:5001: binding vsock is "
                                      "left to the test VM, and the example's own test "
                                      "(tests/host/test_examples.py) serves it; the unix "
                                      "form below runs here"),
    "python examples/kv_service.py unix:///tmp/kv.sock": (HOST, "says it is ready; SIGTERM "
                                                          "stops it with 0"),
    # docs/windows.md
    "hvsock register \"My agent\" --port 5000 --export ps1 > register-my-agent.ps1":
        (HOST, "writes the script (in a temporary directory)"),
    "hvsock register \"My agent\" --port 5000 --export ps1 -o "
    "/mnt/c/Users/me/register-my-agent.ps1": (HOST, "a temporary path for /mnt/c/Users/me"),
    "echo hello | hvsock connect vsock://host:5000": (NOT, _CID2),
}


def rows(how: str) -> list[str]:
    return [command for command, (mode, _) in TABLE.items() if mode == how]
