# The hvsock.vm collection's connection plugin: Ansible tasks through the hvsock guest agent.
# It depends only on hvsock's public API (``import hvsock``), never on its internals, so the
# library can change inside without breaking it (docs/architecture.md).
from __future__ import annotations

DOCUMENTATION = r"""
name: hvsock
short_description: Run tasks in VMs through the hvsock guest agent over VM sockets
description:
  - Runs commands through the exec service of C(hvsock agent) and moves files through its
    cp service, over AF_VSOCK, Hyper-V sockets, hybrid vsock (Firecracker, Cloud
    Hypervisor), or Unix and TCP sockets. The guest needs no network and no sshd.
  - The guest's agent must enable exec, and cp with the root C(/) (see docs/ansible.md).
  - Commands run as the agent's user (usually root); C(ansible_user) is not used. Use
    C(become) (sudo or su, without a password) to run as someone else.
  - Every command is one connection to the agent (the agent's protocol carries one
    command per connection); connecting over a VM socket costs well under a millisecond.
author: hvsock contributors
version_added: "0.1.0"
extends_documentation_fragment:
  - connection_pipelining
options:
  remote_addr:
    description:
      - The agent's address, any address hvsock knows, for example C(vsock://3:5100),
        C(hvsock://name:MyVM/5100), C(hvsock://<vm id>/5100),
        C(hybrid:///run/fc/v.sock:5100), C(unix:///run/vm1/agent.sock),
        C(tcp://127.0.0.1:5100).
    default: inventory_hostname
    type: str
    vars:
      - name: inventory_hostname
      - name: ansible_host
      - name: ansible_hvsock_address
  cp_address:
    description:
      - The address of the agent's cp service. By default the agent's address with port
        5005 (the port the agent serves cp on when C([cp]) names no C(listen)). Required
        when the agent's address has no port (C(unix://)).
    type: str
    vars:
      - name: ansible_hvsock_cp_address
  hvsock_timeout:
    description: Seconds to wait for a connection to the agent.
    type: float
    default: 10
    vars:
      - name: ansible_hvsock_timeout
    env:
      - name: ANSIBLE_HVSOCK_TIMEOUT
  hvsock_retries:
    description:
      - How many times to retry connecting to the agent (an agent restarting, a
        Firecracker snapshot restored), with hvsock's back-off between tries.
    type: int
    default: 0
    vars:
      - name: ansible_hvsock_retries
    env:
      - name: ANSIBLE_HVSOCK_RETRIES
  hvsock_jump:
    description:
      - An ssh destination (C(user@hypervisor-host)) that runs the agent's VM. Each
        connection to the agent (and to its cp service) then goes through
        C(ssh JUMP hvsock connect ADDRESS), so one control node manages VMs on many
        hypervisor hosts. The addresses are as seen from that host. C(hvsock) must be
        installed there; ssh must log in without a prompt (keys, an agent); ssh's own
        configuration (ControlMaster, ControlPersist) applies.
    type: str
    vars:
      - name: ansible_hvsock_jump
    env:
      - name: ANSIBLE_HVSOCK_JUMP
  hvsock_jump_ssh:
    description: The ssh command (and options) used for C(hvsock_jump).
    type: str
    default: ssh -T -o BatchMode=yes
    vars:
      - name: ansible_hvsock_jump_ssh
    env:
      - name: ANSIBLE_HVSOCK_JUMP_SSH
  hvsock_jump_hvsock:
    description: The C(hvsock) command on the jump host.
    type: str
    default: hvsock
    vars:
      - name: ansible_hvsock_jump_hvsock
  hvsock_command_timeout:
    description:
      - Seconds a command may run before the agent kills its process group. Unset, the
        agent's C(max_timeout) applies.
    type: float
    vars:
      - name: ansible_hvsock_command_timeout
    env:
      - name: ANSIBLE_HVSOCK_COMMAND_TIMEOUT
"""

EXAMPLES = r"""
# inventory.yml
all:
  vars:
    ansible_connection: hvsock.vm.hvsock
  hosts:
    kvm-guest:
      ansible_host: vsock://3:5100
    hyperv-guest:
      ansible_host: hvsock://name:MyVM/5100
    firecracker-guest:
      ansible_host: hybrid:///run/fc/v.sock:5100
    remote-kvm-guest:                 # a VM on another hypervisor host, through ssh
      ansible_host: vsock://5:5100
      ansible_hvsock_jump: admin@kvm-host-2
"""

import contextlib
import io
import os
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

import hvsock
import hvsock.windows

display = Display()

#: The port of the agent's cp service when its section names no address (docs/agent.md).
CP_PORT = 5005


def cp_address_for(agent_address: str) -> str:
    """The cp service's default address: the agent's own, with port 5005."""
    address = hvsock.parse_address(agent_address)
    if isinstance(address, hvsock.VsockAddress):
        return str(hvsock.VsockAddress(address.cid, CP_PORT))
    if isinstance(address, hvsock.HybridAddress):
        return str(hvsock.HybridAddress(address.uds_path, CP_PORT))
    if isinstance(address, hvsock.TcpAddress):
        return str(hvsock.TcpAddress(address.host, CP_PORT))
    if isinstance(address, hvsock.HyperVAddress):
        return str(hvsock.HyperVAddress.for_port(address.vm_id, CP_PORT))
    if isinstance(address, hvsock.NamedVmAddress):
        return str(hvsock.NamedVmAddress(address.vm_name,
                                         hvsock.windows.service_id_for_port(CP_PORT)))
    raise AnsibleError(
        f"{agent_address} has no port to derive the cp service's address from: set "
        "ansible_hvsock_cp_address to the address of the agent's [cp] listen")


class _Jump:
    """Local Unix sockets whose connections each run ``ssh JUMP hvsock connect ADDRESS``.

    hvsock.exec and hvsock.copy dial an address; the bridge gives them one (a socket in a
    private directory) and hands each accepted connection to ssh as its stdin and stdout,
    so the agent's protocols pass through ssh unchanged.
    """

    def __init__(self, ssh: list[str], destination: str, remote_hvsock: str) -> None:
        self._ssh = [*ssh, destination]
        self._hvsock = remote_hvsock
        self._dir = tempfile.mkdtemp(prefix="hvj-", dir="/tmp")  # short: socket paths
        self._listeners: list[socket.socket] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._lock = threading.Lock()
        self.log = os.path.join(self._dir, "ssh.log")

    def route(self, address: str) -> str:
        """A local address whose connections reach *address* through the jump host."""
        path = os.path.join(self._dir, f"{len(self._listeners)}.sock")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        listener.listen(16)
        self._listeners.append(listener)
        threading.Thread(target=self._serve, args=(listener, address), daemon=True,
                         name=f"hvsock jump {address}").start()
        return f"unix://{path}"

    def _serve(self, listener: socket.socket, address: str) -> None:
        command = shlex.join([self._hvsock, "connect", address])
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with conn, open(self.log, "ab") as log:
                # ssh owns the connection from here: our copy closes with the block.
                proc = subprocess.Popen([*self._ssh, command], stdin=conn.fileno(),
                                        stdout=conn.fileno(), stderr=log,
                                        start_new_session=True)
            with self._lock:
                self._procs = [p for p in self._procs if p.poll() is None] + [proc]

    def messages(self) -> str:
        try:
            with open(self.log, "rb") as f:
                return str(to_text(f.read()[-2000:])).strip()
        except OSError:
            return ""

    def close(self) -> None:
        for listener in self._listeners:
            # shutdown wakes the thread blocked in accept(); close alone does not.
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


class Connection(ConnectionBase):
    """Commands through the agent's exec service, files through its cp service."""

    transport = "hvsock.vm.hvsock"
    has_pipelining = True
    _connected: bool  # set by ConnectionBase, which mypy sees as Any

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._address = ""  # where hvsock.exec dials (the bridge's, through a jump)
        self._agent = ""  # the agent's address as the inventory gives it
        self._cp_address = ""
        self._jump: _Jump | None = None

    def _connect(self) -> Connection:
        if not self._connected:
            self._agent = self._address = self.get_option("remote_addr")
            try:
                hvsock.parse_address(self._agent)
            except hvsock.HvsockError as e:
                raise AnsibleConnectionFailure(f"hvsock: bad agent address: {e}") from e
            jump = self.get_option("hvsock_jump")
            display.vvv(f"ESTABLISH HVSOCK CONNECTION TO {self._agent}"
                        + (f" THROUGH {jump}" if jump else ""), host=self._agent)
            if jump:
                self._jump = _Jump(shlex.split(self.get_option("hvsock_jump_ssh")), jump,
                                   self.get_option("hvsock_jump_hvsock"))
                self._address = self._jump.route(self._agent)
            self._connected = True
        return self

    def _cp(self) -> str:
        if not self._cp_address:
            self._cp_address = self.get_option("cp_address") or cp_address_for(self._agent)
            if self._jump is not None:
                self._cp_address = self._jump.route(self._cp_address)
        return self._cp_address

    def _failure(self, what: str, error: hvsock.HvsockError) -> AnsibleConnectionFailure:
        where, said = self._agent, ""
        if self._jump is not None:
            where += f" through {self.get_option('hvsock_jump')}"
            said = self._jump.messages()
        return AnsibleConnectionFailure(
            f"hvsock: {what} through the agent at {where} failed: {error}"
            + (f"; ssh said: {said}" if said else ""))

    def exec_command(self, cmd: str, in_data: bytes | None = None,
                     sudoable: bool = True) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        if sudoable and self.become and self.become.expect_prompt():
            # The agent gives the command no terminal, so nothing could answer a prompt.
            raise AnsibleError(
                "hvsock: become with a password is not supported (the agent runs commands "
                "without a terminal): configure passwordless sudo, or run the agent as root "
                "and use become_method su with no password")
        executable = self._play_context.executable or "/bin/sh"
        argv = [*shlex.split(executable), "-c", to_text(cmd)]
        display.vvv(f"EXEC {argv!r}", host=self._agent)
        try:
            result = hvsock.exec(
                self._address, argv, input=in_data if in_data else b"",
                timeout=self.get_option("hvsock_command_timeout"),
                connect_timeout=self.get_option("hvsock_timeout"),
                retries=self.get_option("hvsock_retries"))
        except hvsock.HvsockError as e:
            raise self._failure("running a command", e) from e
        rc = result.exit_status if result.returncode < 0 else result.returncode
        return rc, result.stdout, result.stderr

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._agent)
        if not os.path.isfile(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        self._copy(in_path, ":" + self._remote(out_path), "copying a file to the VM")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._agent)
        self._copy(":" + self._remote(in_path), out_path, "copying a file from the VM")

    def _remote(self, path: str) -> str:
        if not path.startswith("/"):
            # The cp service knows no working directory: a relative path would be relative
            # to nothing. Ansible's own temporary paths are always absolute.
            raise AnsibleError(f"hvsock: the remote path {path!r} must be absolute")
        return path

    def _copy(self, source: str, dest: str, what: str) -> None:
        try:
            # Explicit stdin/stdout, never used (no "-" path): hvsock.copy reads the
            # defaults from sys.stdout.buffer, which an Ansible worker has replaced.
            hvsock.copy(self._cp(), source, dest, stdin=io.BytesIO(), stdout=io.BytesIO(),
                        timeout=self.get_option("hvsock_timeout"),
                        retries=self.get_option("hvsock_retries"))
        except hvsock.RemoteError as e:
            # The agent answered and refused (outside its cp roots, read-only, a symlink in
            # the path, a full disk): the VM is reachable, the task failed.
            raise AnsibleError(f"hvsock: {what} was refused by {self._cp()}: {e}") from e
        except hvsock.ArgumentError as e:
            raise AnsibleError(f"hvsock: {what}: {e}") from e
        except hvsock.HvsockError as e:
            raise self._failure(what, e) from e

    def close(self) -> None:
        # Nothing else stays open between commands: each one is its own connection.
        if self._jump is not None:
            self._jump.close()
            self._jump = None
            self._cp_address = ""
        self._connected = False
