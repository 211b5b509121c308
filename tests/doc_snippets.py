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
    return [
        "README.md",
        *sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))),
    ]


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


_SSH = (
    "needs an SSH server in a guest; the `hvsock connect` it runs is covered by the "
    "connect snippets"
)
_CID2 = "dials the host (CID 2): only a real guest has one; in the test VM CID 2 would leave the VM"
_WINDOWS = "Windows host only (AF_HYPERV / the registry)"
_OUTPUT = "sample output shown in the block, not a command"


_DIR = "the runner adds --dir <temporary directory> (the pools' default /var/lib/hyperv is root's)"


def _guest(what: str, kernel_test: str, host_test: str) -> tuple[str, str]:
    """A NOT row for a command that dials a guest (CID 3), naming the tests that cover it."""
    return (
        NOT,
        f"dials a guest (CID 3): never connected from this machine; {what} over "
        f"AF_VSOCK in the test VM in {kernel_test}; the same command with a unix:// "
        f"socket for the guest's address runs in tests/host/test_doc_snippets.py::{host_test}",
    )


_COPY = _guest("copies", "tests/kernel/test_files_kernel.py", "test_the_file_copy_recipe")
_EXEC = _guest("exec", "tests/kernel/test_exec_kernel.py", "test_the_agent_recipe")
_SHARE = (
    NOT,
    "serves guest CID 3 on the fixed 9P port; the same command with --allow 1 on "
    "a free port runs in tests/kernel/test_share_kernel.py, and with a unix:// listener "
    "and NAME=DIR in tests/host/test_share_cli.py::test_share_serves_named_exports",
)
_MOUNT = (
    NOT,
    f"{_CID2}; and it mounts (root). tests/kernel/test_share_kernel.py runs "
    "`hvsock mount vsock://1:PORT ...` (with -o ro too) against `hvsock share` in the VM",
)
_KVP_VM = _guest(
    "the KVP service", "tests/kernel/test_kvp_kernel.py", "test_the_kvp_service_recipe"
)


#: command -> (how, reason or what the runner checks). One row per distinct command.
TABLE: dict[str, tuple[str, str]] = {
    # README: set-up
    "./scripts/demo": (
        NOT,
        "sets up .venv (and may apt-get install); the `hvsock demo` it runs is a HOST row",
    ),
    "./scripts/test": (NOT, "is the whole test suite itself"),
    # README: the command line
    "hvsock service-id 2761": (HOST, "prints 00000ac9-facb-11e6-bd58-64006a7986d3"),
    "hvsock port 00000ac9-facb-11e6-bd58-64006a7986d3": (HOST, "prints 2761"),
    "hvsock addr hvsock://parent/2761": (HOST, "explains, exit 0"),
    "hvsock cid": (HOST, "the /dev/vsock ioctl, no connect: exit 0, or 3 without vsock"),
    "hvsock connect vsock://3:22": (KERNEL, "to CID 1 and a listener's port in the VM"),
    "ssh -o ProxyCommand='hvsock connect vsock://3:22' user@vm": (NOT, _SSH),
    "hvsock listen vsock://any:5000": (KERNEL, "a client from CID 1 in the VM"),
    "hvsock listen unix:///run/agent.sock --exec 'my-handler'": (
        HOST,
        "a temporary path, `tr a-z A-Z` as the handler; a client's bytes come back",
    ),
    "hvsock demo": (HOST, "exit 0, 'ok'"),
    "hvsock echo-server vsock://any:7007": (KERNEL, "with the ping row, port chosen in the VM"),
    "hvsock ping vsock://2:7007 -c 100 --json": (KERNEL, "CID 1 for CID 2 in the VM"),
    'hvsock register "My agent" --port 5000': (
        HOST,
        "off Windows: exit 3, pointing to --export (the Windows tier registers)",
    ),
    "hvsock services": (HOST, "off Windows: exit 3 with the reason"),
    "hvsock vms": (
        HOST,
        "on Linux: this KVM host's VMs, or which sources were asked "
        "(tests/host/test_kvm_hosts.py lists fake ones)",
    ),
    "hvsock connect vsock://name:web1:22": (
        NOT,
        "dials a KVM host's VM by name; tests/hypervisor/test_kvm_names.py connects "
        "to L2 by its name",
    ),
    "hvsock connect hybrid://name:fc1:5100": (
        NOT,
        "needs a Firecracker VM; tests/host/test_kvm_hosts.py::"
        "test_connect_to_a_firecracker_vm_by_name connects to a fake one by its name",
    ),
    "qemu-system-x86_64 -name web1 -device vhost-vsock-pci,guest-cid=3 ...": (
        NOT,
        "a VM's launch recipe (a disk image, KVM); the hypervisor tier starts L2 "
        "with these options",
    ),
    "firecracker --id fc1 --api-sock /srv/fc1/api.sock ...": (
        NOT,
        "a VM's launch recipe; Firecracker is not installed here",
    ),
    "curl --unix-socket /srv/fc1/api.sock -X PUT http://localhost/vsock -d "
    '\'{"guest_cid": 3, "uds_path": "/srv/fc1/v.sock"}\'': (
        NOT,
        "needs Firecracker's API socket; its GET answers are served by "
        "tests/host/test_kvm_hosts.py's fake",
    ),
    "cloud-hypervisor --api-socket path=/run/ch/ch1.sock "
    "--vsock cid=3,socket=/run/ch/ch1.vsock ...": (
        NOT,
        "a VM's launch recipe; Cloud Hypervisor is not installed here",
    ),
    "hvsock connect hvsock://name:MyVM/5000": (HOST, "off Windows: exit 3 with the reason"),
    "hvsock doctor vsock://host:5000": (HOST, "never connects: exit 0 or 1, a report"),
    "hvsock selftest --json": (
        HOST,
        "JSON report; connects vsock only where vsock_loopback "
        "is loaded (then the kernel tier runs it)",
    ),
    "hvsock relay tcp://127.0.0.1:2222 vsock://3:22": (KERNEL, "to CID 1 in the VM"),
    "hvsock stress unix:///tmp/echo.sock -n 1000 -P 100": (
        HOST,
        "scaled down to -n 100 -P 20, against the echo-server row",
    ),
    # docs/cli.md
    "ssh -o ProxyCommand='hvsock connect hybrid:///run/fc/v.sock:22' user@microvm": (NOT, _SSH),
    # docs/port-forwarding.md
    "hvsock relay vsock://any:2222 tcp://127.0.0.1:22 --allow 2": (
        NOT,
        "its one allowed peer is the host (CID 2): only a real guest gets connections from there",
    ),
    "ssh -o ProxyCommand='hvsock connect vsock://3:2222' user@guest": (NOT, _SSH),
    "ssh -o ProxyCommand='hvsock connect hvsock://name:MyVM/2222' user@vm": (NOT, _SSH),
    "ssh -o ProxyCommand='hvsock connect hybrid:///run/fc/v.sock:2222' user@microvm": (NOT, _SSH),
    "hvsock relay tcp://127.0.0.1:2222 vsock://3:2222": (KERNEL, "to CID 1 in the VM"),
    "ssh -p 2222 user@127.0.0.1": (NOT, _SSH),
    "hvsock relay unix://$XDG_RUNTIME_DIR/agent.sock vsock://host:5010 &": (NOT, _CID2),
    "export SSH_AUTH_SOCK=$XDG_RUNTIME_DIR/agent.sock": (NOT, "part of the row above"),
    "hvsock relay vsock://any:3128 tcp://127.0.0.1:3128 --allow 3 --allow 4": (
        NOT,
        "its allowed peers are guests 3 and 4: only a real host has them",
    ),
    "hvsock relay hvsock://wildcard/3128 tcp://127.0.0.1:3128": (NOT, _WINDOWS),
    "hvsock relay hybrid:///run/fc/v.sock:3128 tcp://127.0.0.1:3128": (
        HOST,
        "a guest's connection arrives on <uds>_3128 and reaches a TCP echo server",
    ),
    "hvsock relay tcp://127.0.0.1:3128 vsock://host:3128": (NOT, _CID2),
    "export http_proxy=http://127.0.0.1:3128": (NOT, "part of the row above"),
    "hvsock bench server tcp://127.0.0.1:7000 &": (HOST, "the bench recipe, in order"),
    "hvsock bench client tcp://127.0.0.1:7000": (HOST, "the bench recipe"),
    "hvsock relay tcp://127.0.0.1:7001 tcp://127.0.0.1:7000 &": (HOST, "the bench recipe"),
    "hvsock bench client tcp://127.0.0.1:7001 --tests throughput,rtt --duration 5 --json": (
        HOST,
        "the bench recipe, through the relay; --duration 1",
    ),
    "hvsock echo-server unix:///tmp/echo.sock &": (HOST, "the stress recipe"),
    "hvsock stress unix:///tmp/echo.sock -n 1000 -P 100 --max-size 256K": (
        HOST,
        "the stress recipe, scaled down to -n 100 -P 20",
    ),
    "FAILED connection 17 (seed 4821, 90112 bytes; sent 90112, got 90112): what came back "
    "differs from what was sent": (NOT, _OUTPUT),
    "replay: hvsock stress unix:///tmp/echo.sock --connections 1 --min-size 0 --max-size "
    "262144 --max-chunk 65536 --seed 4821": (HOST, "the replay line runs as a command too"),
    # docs/services.md
    "python examples/kv_service.py": (
        NOT,
        "listens on vsock://any:5001: binding vsock is "
        "left to the test VM, and the example's own test "
        "(tests/host/test_examples.py) serves it; the unix "
        "form below runs here",
    ),
    "python examples/kv_service.py unix:///tmp/kv.sock": (
        HOST,
        "says it is ready; SIGTERM stops it with 0",
    ),
    # docs/windows.md
    'hvsock register "My agent" --port 5000 --export ps1 > register-my-agent.ps1': (
        HOST,
        "writes the script (in a temporary directory)",
    ),
    'hvsock register "My agent" --port 5000 --export ps1 -o '
    "/mnt/c/Users/me/register-my-agent.ps1": (HOST, "a temporary path for /mnt/c/Users/me"),
    "echo hello | hvsock connect vsock://host:5000": (NOT, _CID2),
    # README: the lines the relay, cp, kvp and agent features added
    "hvsock relay --config relay.toml": (
        HOST,
        "relay.toml is a loopback one written by the test (docs/port-forwarding.md's "
        "sample listens on vsock and dials CID 3; the test checks that sample parses): "
        "both forwards reach their echo servers, SIGTERM exits 0",
    ),
    "hvsock cp --remote vsock://3:5005 -r ./site :/srv/www": _COPY,
    "hvsock share ./src --listen vsock://any:564 --allow 3": _SHARE,
    "hvsock share ~/src docs=/srv/docs --listen vsock://any:564 --allow 3": _SHARE,
    "hvsock mount vsock://2:564 /mnt/src": _MOUNT,
    "hvsock mount vsock://2:564 /mnt/docs -o aname=docs,ro": _MOUNT,
    "hvsock kvp set Role web": (HOST, _DIR + "; the record is read back from pool 1's file"),
    "hvsock agent": (
        NOT,
        "reads /etc/hvsock/agent.toml (or serves the defaults on "
        "vsock://any:5100): a system service; `hvsock agent --check-config` "
        "passes docs/agent.md's sample in test_the_agent_recipe, the --listen "
        "rows run the same command here, and the agent's exec over AF_VSOCK is "
        "tested in tests/kernel/test_exec_kernel.py",
    ),
    "hvsock agent --listen unix:///tmp/a.sock --enable exec,info": (
        HOST,
        "a temporary socket path; `hvsock exec` runs real commands through it "
        "(output and exit status)",
    ),
    "hvsock exec -t vsock://3:5100 -- bash": (
        NOT,
        _EXEC[1] + " (`bash` with -t given `exit 3` on stdin)",
    ),
    # docs/agent.md
    "hvsock agent --listen vsock://any:5100 --enable exec,info,health,time": (
        HOST,
        "the runner listens on a temporary unix:// socket instead of vsock://any:5100 "
        "(no vsock here); the exec rows below run through it, and `hvsock agent "
        "--check-config` passes docs/agent.md's sample config",
    ),
    "hvsock exec vsock://3:5100 -- uname -a": _EXEC,
    "echo data | hvsock exec vsock://3:5100 -- sha256sum": _EXEC,
    ".venv/bin/python benchmarks/bench_exec.py": (
        NOT,
        "a benchmark (minutes; needs openssh-server, socat and qemu-guest-agent): "
        "run by hand; exec and QGA are tested in tests/host/test_exec.py and "
        "tests/host/test_qga.py",
    ),
    # docs/file-copy.md
    "hvsock cp --serve /srv/www /var/log --listen vsock://any:5005": (
        HOST,
        "temporary directories for the roots, and a temporary unix:// socket "
        "instead of vsock://any:5005 (no vsock here); the copy rows below run against it",
    ),
    "hvsock cp --remote vsock://3:5005 :/var/log/app.log .": _COPY,
    "hvsock cp --remote vsock://3:5005 -r -p :/srv/www/site ./backup": _COPY,
    "tar -c data | hvsock cp --remote vsock://3:5005 - :/srv/www/data.tar": _COPY,
    "hvsock cp --remote vsock://3:5005 :/var/log/app.log - | less": _COPY,
    "hvsock cp --remote vsock://3:5005 --resume big.iso :/srv/www/": _COPY,
    "hvsock cp -a -v ./site vsock://3:5005:/srv/www": _COPY,
    "hvsock cp vsock://3:5005:/var/log/app.log .": _COPY,
    # docs/kvp.md: the pools on this machine
    "hvsock kvp set ProvisioningState ready": (HOST, _DIR + "; read back from the file"),
    "hvsock kvp get ProvisioningState": (HOST, _DIR + "; prints the value, exit 1 once deleted"),
    "hvsock kvp list": (
        HOST,
        _DIR + "; also with the --all and --json its comment names (alone and "
        "together): a duplicate shows only with --all",
    ),
    "hvsock kvp delete ProvisioningState": (HOST, _DIR + "; the key is gone from the file"),
    "hvsock kvp watch --count 10 --for 60": (
        HOST,
        _DIR + "; keys are set until it has printed 10 `set` lines and exited 0",
    ),
    "hvsock kvp host-info": (
        HOST,
        _DIR + "; pool 3 filled first; also with the --json its comment names",
    ),
    "hvsock kvp --pool auto-external list": (HOST, _DIR + "; pool 3's keys"),
    "hvsock kvp --host-pool --pool 3 set HostName h": (
        HOST,
        _DIR + "; pool 3's file holds the record",
    ),
    "hvsock kvp clear --stale": (
        HOST,
        _DIR + "; a pool dated before boot is emptied, a fresh one kept",
    ),
    "hvsock kvp set Key Value --full": (HOST, _DIR + "; read back"),
    "hvsock kvp --dir /tmp/pools list": (HOST, "a temporary directory for /tmp/pools"),
    # docs/kvp.md: the service over vsock
    "hvsock kvp serve": (
        HOST,
        _DIR + " and --listen unix://<temporary> --allow uid:<ours> (the default, "
        "vsock://any:5010 and the host only, cannot be reached here); the --vm rows run "
        "against it",
    ),
    "hvsock kvp --vm vsock://3 get ProvisioningState": _KVP_VM,
    "hvsock kvp --vm vsock://3 list --json": _KVP_VM,
    "hvsock kvp --vm vsock://3 set Role web": _KVP_VM,
    "hvsock kvp --vm vsock://3 --pool auto-external set VirtualMachineName web-1": _KVP_VM,
    "hvsock kvp --vm hybrid:///run/fc/v.sock host-info": (
        HOST,
        "a temporary path for the VMM's socket, where the test plays Firecracker "
        "(answers CONNECT 5010, then carries the bytes to the `hvsock kvp serve` row)",
    ),
    # docs/try-out.md: Unix sockets
    "mkdir -p /tmp/try": (HOST, "the runner's temporary directory stands for /tmp/try"),
    "hvsock echo-server unix:///tmp/try/echo.sock &": (HOST, "the try-out, in order"),
    "hvsock ping unix:///tmp/try/echo.sock -c 10": (HOST, "the try-out: 10 echoes"),
    "hvsock agent --listen unix:///tmp/try/agent.sock --enable exec,info &": (
        HOST,
        "the try-out, with its default allowlist (this uid)",
    ),
    "hvsock exec unix:///tmp/try/agent.sock -- uname -a": (
        HOST,
        "the try-out: prints `uname -a`'s line, exit 0",
    ),
    # docs/try-out.md: AF_VSOCK on one machine
    "sudo modprobe vsock_loopback": (
        NOT,
        "loads a kernel module as root; scripts/kernel-tests "
        "loads it in the test VM, where the rows below run",
    ),
    "hvsock doctor vsock://local:5000": (KERNEL, "address_cid ok, 'stays in this kernel'"),
    "hvsock echo-server vsock://any:5000 &": (KERNEL, "the try-out, a free port"),
    "hvsock ping vsock://local:5000 -c 10": (KERNEL, "the try-out: 10 echoes over CID 1"),
    "hvsock kvp serve --listen vsock://any:5010 --allow 1 --dir /tmp/try/pools &": (
        KERNEL,
        "the try-out: a free port, a temporary directory",
    ),
    "hvsock kvp --dir /tmp/try/pools set Greeting hello": (KERNEL, "the try-out"),
    "hvsock kvp --vm vsock://local get Greeting": (
        KERNEL,
        "the try-out: prints hello through the service (the free port added)",
    ),
    "hvsock echo-server tcp://127.0.0.1:7000 &": (KERNEL, "the try-out's relays, free ports"),
    "hvsock relay vsock://any:7010 tcp://127.0.0.1:7000 --allow 1 &": (
        KERNEL,
        "the try-out's relays",
    ),
    "hvsock relay tcp://127.0.0.1:7011 vsock://local:7010 &": (KERNEL, "the try-out's relays"),
    "hvsock ping tcp://127.0.0.1:7011 -c 10": (
        KERNEL,
        "the try-out: 10 echoes through both relays",
    ),
    "python clock.py &": (KERNEL, "clock.py is the try-out's python block, a free port"),
    'python -c \'import hvsock; print(hvsock.RpcClient(hvsock.connect("vsock://local:5002"))'
    '.call("time"))\'': (KERNEL, "the answer names the caller, vsock://1:<port>"),
    # docs/ansible.md
    "pip install 'hvsock[ansible]'": (
        NOT,
        "installs packages; the test extra brings the same "
        "ansible-core, which tests/host/test_ansible.py uses",
    ),
    "pip install -e '.[dev,ansible]'": (
        NOT,
        "installs packages (the development set-up); tests/host/test_ansible.py uses "
        "the same ansible-core",
    ),
    ".venv/bin/python benchmarks/bench_ansible.py [--only commands|copy] [--json]": (
        NOT,
        "a benchmark (minutes; needs openssh-server): run by hand; the plugin is tested "
        "in tests/host/test_ansible.py, and the put_file debug lines the breakdown reads "
        "by its worker test",
    ),
    "ansible-inventory -i kvm1.hvsock.yml -i kvm2.hvsock.yml --graph": (
        NOT,
        "needs a host with VMs and an ssh jump host; tests/host/test_ansible_inventory.py "
        "and test_ansible_jump.py run ansible-inventory over discovery fakes and a real sshd",
    ),
    "ansible-playbook -i kvm1.hvsock.yml -i kvm2.hvsock.yml site.yml": (
        NOT,
        "needs VMs with agents; tests/host/test_ansible_inventory.py lists a stand-in "
        "Firecracker VM and runs a playbook against the agent behind it",
    ),
    "ansible-doc -t connection hvsock.vm.hvsock": (
        NOT,
        "run with a temporary HOME (it writes ~/.ansible) by tests/unit/"
        "test_ansible_plugin.py::test_ansible_doc_finds_the_plugin_on_sys_path",
    ),
}


def rows(how: str) -> list[str]:
    return [command for command, (mode, _) in TABLE.items() if mode == how]
