# The hvsock.vm collection's inventory plugin: the VMs hvsock finds on a hypervisor host,
# as hosts reached through the hvsock.vm.hvsock connection plugin. Public API only
# (``import hvsock``), or the JSON of ``hvsock vms --json`` run on another host over ssh.
from __future__ import annotations

DOCUMENTATION = r"""
name: vms
short_description: The VMs of a hypervisor host, as hosts reached through the hvsock agent
description:
  - Lists the VMs hvsock finds on a host (C(hvsock vms)) as inventory hosts whose
    C(ansible_host) is an address of their hvsock agent, with
    C(ansible_connection=hvsock.vm.hvsock).
  - On Linux (KVM) hosts, libvirt's domains (C(virsh -r), else libvirt-python) and the
    QEMU, Firecracker and Cloud Hypervisor processes (their command lines, and the VMMs'
    API sockets); on Windows, the Hyper-V VMs (Get-VM) and WSL 2's VM.
  - With C(hvsock_jump), discovery runs on another host through
    C(ssh JUMP hvsock vms --json), and every host it lists gets that jump, so one control
    node manages the VMs of many hypervisor hosts (one configuration file per host).
  - Groups, by default C(hypervisor_<name>) (qemu, firecracker, cloud_hypervisor,
    hyperv) and C(state_<state>) (running, shut_off, off, paused, ...), plus C(group);
    C(compose), C(groups) and C(keyed_groups) add more from the host variables.
  - The configuration file's name must end in C(hvsock.yml) or C(hvsock.yaml) (for
    example C(kvm1.hvsock.yml)).
author: hvsock contributors
version_added: "0.1.0"
extends_documentation_fragment:
  - constructed
options:
  plugin:
    description: The name of this plugin; it must be there for the file to be read.
    required: true
    choices: ["hvsock.vm.vms"]
  port:
    description: The vsock port the guests' agents listen on.
    type: int
    default: 5100
  cp_port:
    description:
      - The port of the agents' cp service. At 5005 (the agent's default) the connection
        plugin finds it by itself; another sets C(ansible_hvsock_cp_address).
    type: int
    default: 5005
  address:
    description:
      - C(endpoint) gives each host the address its VM has now (C(vsock://CID:PORT),
        C(hybrid:///path/v.sock:PORT), C(hvsock://VMID/PORT)), so nothing is looked up
        per command.
      - C(name) gives the name form (C(vsock://name:VM:PORT), C(hybrid://name:VM:PORT),
        C(hvsock://name:VM/PORT)), looked up on every connection; it follows a VM whose
        CID changes (libvirt's C(auto)) while the inventory is in use.
      - A VM with no CID yet (libvirt C(auto), shut off) always gets the name form.
    type: str
    default: endpoint
    choices: [endpoint, name]
  running_only:
    description: List only the VMs that run (and, on KVM, have a vsock device).
    type: bool
    default: false
  prefix:
    description: Text put before every host name (VMs of several hosts with one name).
    type: str
    default: ""
  group:
    description: A group every host of this source joins (for example the hypervisor host's name).
    type: str
  proc:
    description: Linux hosts read processes from this directory instead of C(/proc).
    type: str
  hvsock_jump:
    description:
      - An ssh destination (C(user@hypervisor-host)) where discovery runs
        (C(hvsock vms --json) over ssh) and every host gets C(ansible_hvsock_jump), so
        the connection plugin reaches its agent through the same host.
    type: str
  hvsock_jump_ssh:
    description: The ssh command (and options) for C(hvsock_jump); given to the hosts too.
    type: str
  hvsock_jump_hvsock:
    description: The C(hvsock) command on the jump host; given to the hosts too.
    type: str
    default: hvsock
  timeout:
    description: Seconds discovery may take (over ssh, the whole ssh run).
    type: float
    default: 60
"""

EXAMPLES = r"""
# kvm1.hvsock.yml: this host's VMs (libvirt, QEMU, Firecracker, Cloud Hypervisor)
plugin: hvsock.vm.vms
port: 5100
running_only: true

# kvm2.hvsock.yml: the VMs of another hypervisor host, reached through ssh to it
plugin: hvsock.vm.vms
hvsock_jump: admin@kvm2.example.com
prefix: kvm2-
group: kvm2
keyed_groups:
  - key: hvsock_hypervisor
    prefix: vmm

# ansible-inventory -i kvm1.hvsock.yml --graph
"""

import json
import shlex
import subprocess
import sys

from ansible.errors import AnsibleParserError
from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.inventory import BaseInventoryPlugin, Constructable, to_safe_group_name
from ansible.utils.display import Display

import hvsock
import hvsock.kvm
import hvsock.windows

display = Display()

CONNECTION = "hvsock.vm.hvsock"
CP_PORT = 5005
DEFAULT_SSH = "ssh -T -o BatchMode=yes"
SUFFIXES = ("hvsock.yml", "hvsock.yaml")


def discovered_locally(proc: str | None) -> dict[str, object]:
    """What ``hvsock vms --json`` would print on this host."""
    if sys.platform == "win32":
        found = hvsock.windows.discover_vms()
        return {"vms": [vm.as_dict() for vm in found.vms], "problems": list(found.problems)}
    kvm = hvsock.kvm.discover_host_vms(proc or "/proc")
    return {
        "vms": [vm.as_dict() for vm in kvm.vms],
        "problems": kvm.problems,
        "why_empty": kvm.why_empty(),
    }


def discovered_through(
    ssh: list[str], jump: str, remote_hvsock: str, proc: str | None, timeout: float
) -> dict[str, object]:
    """``hvsock vms --json`` run on *jump* over ssh."""
    command = shlex.join([remote_hvsock, "vms", "--json", *(["--proc", proc] if proc else [])])
    argv = [*ssh, jump, command]
    try:
        done = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except FileNotFoundError as e:
        raise AnsibleParserError(f"hvsock.vm.vms: cannot run {ssh[0]!r}: {e}") from e
    except subprocess.TimeoutExpired as e:
        raise AnsibleParserError(
            f"hvsock.vm.vms: `{shlex.join(argv)}` took longer than "
            f"{timeout:g} s (the option timeout)"
        ) from e
    said = to_text(done.stderr, errors="surrogate_or_replace").strip()[-2000:]
    if done.returncode != 0:
        raise AnsibleParserError(
            f"hvsock.vm.vms: `hvsock vms --json` on {jump} failed (exit status "
            f"{done.returncode}): {said or 'no message'}; is hvsock installed there "
            "(hvsock_jump_hvsock names it), and does ssh log in without a prompt?"
        )
    try:
        report = json.loads(done.stdout)
        if not isinstance(report, dict) or not isinstance(report.get("vms"), list):
            raise ValueError("no list under 'vms'")
    except ValueError as e:
        raise AnsibleParserError(
            f"hvsock.vm.vms: `hvsock vms --json` on {jump} printed no VM list ({e}): "
            f"{to_text(done.stdout[:300], errors='surrogate_or_replace')!r}"
        ) from e
    return report


def _name_address(vm: dict[str, object], port: int) -> str | None:
    name = vm.get("name")
    if not isinstance(name, str) or not name:
        return None
    if "id" in vm:  # Hyper-V
        return f"hvsock://name:{name}/{port}"
    return f"{'hybrid' if vm.get('uds_path') else 'vsock'}://name:{name}:{port}"


def address_of(vm: dict[str, object], port: int, form: str) -> str | None:
    """The agent's address for one entry of ``hvsock vms --json``; None: no way to it."""
    if "id" in vm:  # a Hyper-V VM (Windows' hvsock vms)
        if form == "name" and not vm.get("wsl"):
            return _name_address(vm, port)
        return f"hvsock://{vm['id']}/{port}"
    if not vm.get("vsock"):
        return None
    if form == "endpoint" or not vm.get("name"):
        if vm.get("uds_path"):
            return str(hvsock.HybridAddress(str(vm["uds_path"]), port))
        if isinstance(vm.get("cid"), int):
            return str(hvsock.VsockAddress(int(vm["cid"]), port))  # type: ignore[call-overload]
    return _name_address(vm, port)


class InventoryModule(BaseInventoryPlugin, Constructable):
    """The VMs ``hvsock vms`` finds, locally or on an ssh jump host."""

    NAME = "hvsock.vm.vms"

    def verify_file(self, path: str) -> bool:
        return bool(super().verify_file(path)) and path.endswith(SUFFIXES)

    def parse(self, inventory: object, loader: object, path: str, cache: bool = True) -> None:
        super().parse(inventory, loader, path, cache)
        self._read_config_data(path)
        jump = self.get_option("hvsock_jump")
        proc = self.get_option("proc")
        if jump:
            ssh = shlex.split(self.get_option("hvsock_jump_ssh") or DEFAULT_SSH)
            report = discovered_through(
                ssh, jump, self.get_option("hvsock_jump_hvsock"), proc, self.get_option("timeout")
            )
        else:
            report = discovered_locally(proc)
        where = f" on {jump}" if jump else ""
        for problem in report.get("problems") or []:  # type: ignore[attr-defined]
            display.vv(f"hvsock.vm.vms{where}: {problem}")
        vms = [vm for vm in report["vms"] if isinstance(vm, dict)]  # type: ignore[attr-defined]
        if not vms:
            display.warning(
                f"hvsock.vm.vms: no VMs found{where}"
                + (f": {report['why_empty']}" if report.get("why_empty") else "")
            )
        group = self.get_option("group")
        if group:
            group = self.inventory.add_group(to_safe_group_name(group))
        taken: set[str] = set()
        for vm in vms:
            self._add(vm, taken, group, jump)

    def _host_name(self, vm: dict[str, object], taken: set[str]) -> str:
        name = vm.get("name")
        if not isinstance(name, str) or not name:
            kind = str(vm.get("hypervisor") or "vm")
            name = (
                f"{kind}-cid{vm['cid']}"
                if vm.get("cid") is not None
                else f"{kind}-pid{vm.get('pid')}"
            )
        name = str(self.get_option("prefix")) + name
        unique, n = name, 2
        while unique in taken:  # two VMs of one name (a domain and a Firecracker VM)
            unique, n = f"{name}-{n}", n + 1
        if unique != name:
            display.warning(
                f"hvsock.vm.vms: two VMs are named {name!r}; one is listed as "
                f"{unique!r} ({vm.get('source')})"
            )
        taken.add(unique)
        return unique

    def _add(
        self, vm: dict[str, object], taken: set[str], group: str | None, jump: str | None
    ) -> None:
        hyperv = "id" in vm
        usable = bool(vm.get("running")) and (hyperv or bool(vm.get("vsock")))
        if self.get_option("running_only") and not usable:
            return
        host = self._host_name(vm, taken)
        self.inventory.add_host(host)
        port = self.get_option("port")
        address = address_of(vm, port, self.get_option("address"))
        hypervisor = "hyperv" if hyperv else str(vm.get("hypervisor"))
        hostvars: dict[str, object] = {
            "ansible_connection": CONNECTION,
            "hvsock_name": vm.get("name"),
            "hvsock_hypervisor": hypervisor,
            "hvsock_state": vm.get("state"),
            "hvsock_running": bool(vm.get("running")),
            "hvsock_source": vm.get("source"),
            "hvsock_vm": vm,
        }
        if hyperv:
            hostvars.update(hvsock_vm_id=vm.get("id"), hvsock_wsl=vm.get("wsl"))
        else:
            hostvars.update(
                hvsock_cid=vm.get("cid"),
                hvsock_uds_path=vm.get("uds_path"),
                hvsock_pid=vm.get("pid"),
                hvsock_vsock=bool(vm.get("vsock")),
            )
        if address is not None:
            hostvars["ansible_host"] = address
            cp_port = self.get_option("cp_port")
            if cp_port != CP_PORT:
                hostvars["ansible_hvsock_cp_address"] = address_of(
                    vm, cp_port, self.get_option("address")
                )
        if jump:
            hostvars["ansible_hvsock_jump"] = jump
            hostvars["hvsock_hypervisor_host"] = jump
            if self.get_option("hvsock_jump_ssh"):
                hostvars["ansible_hvsock_jump_ssh"] = self.get_option("hvsock_jump_ssh")
            hostvars["ansible_hvsock_jump_hvsock"] = self.get_option("hvsock_jump_hvsock")
        for key, value in hostvars.items():
            self.inventory.set_variable(host, key, value)
        for prefix, value in (("hypervisor", hypervisor), ("state", vm.get("state"))):
            name = to_safe_group_name(f"{prefix}_{str(value).lower()}")
            self.inventory.add_group(name)
            self.inventory.add_child(name, host)
        if group:
            self.inventory.add_child(group, host)
        strict = self.get_option("strict")
        # With inventory_hostname and the rest Ansible gives every host.
        variables = self.inventory.get_host(host).get_vars()
        self._set_composite_vars(self.get_option("compose"), variables, host, strict=strict)
        self._add_host_to_composed_groups(self.get_option("groups"), variables, host, strict=strict)
        self._add_host_to_keyed_groups(
            self.get_option("keyed_groups"), variables, host, strict=strict
        )
