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
  - Commands run as the agent's user (usually root), or as C(ansible_user) when it is
    set (the agent, running as root, switches to that user as C(su -) does); C(become)
    through sudo (with or without C(ansible_become_password)) or su (without one) works
    as it does over ssh.
  - Every command is one connection to the agent (the agent's protocol carries one
    command per connection); connecting over a VM socket costs well under a millisecond.
    Through C(hvsock_jump), ssh's ControlPersist keeps one ssh session to the
    hypervisor host for all of them, across tasks.
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
  remote_user:
    description:
      - The user the agent runs commands as (the agent must run as root, and its
        C([exec]) must not set C(allow_user = false)). Files then move through exec as
        that user too (C(cat) on either side; that user's permissions apply and what
        is put belongs to that user), not through the cp service.
      - Unset, commands run as the agent's user and files move through cp.
    type: str
    ini:
      - section: defaults
        key: remote_user
    env:
      - name: ANSIBLE_REMOTE_USER
    vars:
      - name: ansible_user
      - name: ansible_hvsock_user
    cli:
      - name: user
    keyword:
      - name: remote_user
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
        configuration applies. The default C(hvsock_jump_ssh) keeps one ssh session per
        hypervisor host open for 60 s after its last use (ControlPersist), so the
        commands of every task share it.
    type: str
    vars:
      - name: ansible_hvsock_jump
    env:
      - name: ANSIBLE_HVSOCK_JUMP
  hvsock_jump_ssh:
    description: The ssh command (and options) used for C(hvsock_jump).
    type: str
    default: ssh -T -o BatchMode=yes -o ControlMaster=auto -o ControlPersist=60s
      -o ControlPath=~/.ansible/cp/hvsock-%C
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
from collections.abc import Iterator

from ansible.errors import AnsibleConnectionFailure, AnsibleError, AnsibleFileNotFound
from ansible.module_utils.common.text.converters import to_bytes, to_text
from ansible.plugins.connection import ConnectionBase
from ansible.utils.display import Display

import hvsock

display = Display()

#: The port of the agent's cp service when its section names no address (docs/agent.md).
CP_PORT = 5005
#: Seconds to wait for a become prompt (or become's success line) before giving up on
#: answering it; the command then gets its input without a password.
BECOME_WAIT = 60.0
#: Bytes per read of a file sent through exec (ansible_user set).
PIECE = 1 << 20


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
        # Here, not at the top: Ansible imports this module afresh in every task's
        # worker process, and only Hyper-V names need the Windows layer.
        from hvsock.windows import service_id_for_port

        return str(hvsock.NamedVmAddress(address.vm_name, service_id_for_port(CP_PORT)))
    raise AnsibleError(
        f"{agent_address} has no port to derive the cp service's address from: set "
        "ansible_hvsock_cp_address to the address of the agent's [cp] listen"
    )


class _Jump:
    """Local Unix sockets whose connections each run ``ssh JUMP hvsock connect ADDRESS``.

    hvsock.exec and hvsock.copy dial an address; the bridge gives them one (a socket in a
    private directory) and hands each accepted connection to ssh as its stdin and stdout,
    so the agent's protocols pass through ssh unchanged.
    """

    def __init__(self, ssh: list[str], destination: str, remote_hvsock: str) -> None:
        self._ssh = [*ssh, destination]
        for arg in ssh:
            if arg.startswith("ControlPath=") and "/" in arg:
                # ssh does not make the directory of its control socket.
                with contextlib.suppress(OSError):
                    os.makedirs(
                        os.path.dirname(os.path.expanduser(arg.split("=", 1)[1])),
                        mode=0o700,
                        exist_ok=True,
                    )
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
        threading.Thread(
            target=self._serve, args=(listener, address), daemon=True, name=f"hvsock jump {address}"
        ).start()
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
                proc = subprocess.Popen(
                    [*self._ssh, command],
                    stdin=conn.fileno(),
                    stdout=conn.fileno(),
                    stderr=log,
                    start_new_session=True,
                )
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


class _PromptAnswer:
    """Answers become's password prompt the way ssh's plugin does, for a command that
    has no terminal: its input waits until the command prints the prompt (the password
    goes first) or become's success line (no password was asked), then follows.

    Each piece of output is searched once (with the few bytes before it where a prompt
    or success line may have begun): searching the whole output again for every piece
    made a command's output quadratic to receive."""

    def __init__(self, become: object, password: bytes, data: bytes) -> None:
        self._become = become
        self._prompt = to_bytes(become.prompt).strip()  # type: ignore[attr-defined]
        self._success = to_bytes(become.success)  # type: ignore[attr-defined]
        self._password = password
        self._data = data
        self._cond = threading.Condition()
        self.out = bytearray()
        self.err = bytearray()
        self.prompts = 0
        self.ended = False
        self._succeeded = False
        self._success_from = 0  # where in out the next look for the success line starts

    def _seen(self, buf: bytearray, data: bytes) -> None:
        with self._cond:
            # A prompt that ends in the new bytes starts at most len(prompt) - 1 before
            # them; one that ended before them was counted then.
            start = max(0, len(buf) - len(self._prompt) + 1)
            buf.extend(data)
            if self._prompt:
                self.prompts += buf.count(self._prompt, start)
            self._cond.notify_all()

    def on_stdout(self, data: bytes) -> None:
        self._seen(self.out, data)

    def on_stderr(self, data: bytes) -> None:
        self._seen(self.err, data)

    @property
    def succeeded(self) -> bool:
        with self._cond:
            if not self._succeeded:
                # become's own test, on the output not looked at yet: the success line
                # is a string within one line, so a line cut at the start still has it.
                self._succeeded = bool(
                    self._become.check_success(  # type: ignore[attr-defined]
                        bytes(self.out[self._success_from :])
                    )
                )
                self._success_from = max(0, len(self.out) - len(self._success) + 1)
            return self._succeeded

    def _wait(self, until: object) -> None:
        with self._cond:
            self._cond.wait_for(
                lambda: until() or self.ended,  # type: ignore[operator]
                BECOME_WAIT,
            )

    def pieces(self) -> Iterator[bytes]:
        self._wait(lambda: self.prompts or self.succeeded)
        if self.prompts and not self.succeeded:
            yield self._password + b"\n"
            # A second prompt: the password was wrong; end the input, sudo gives up.
            self._wait(lambda: self.prompts > 1 or self.succeeded)
        if self.succeeded and self._data:
            yield self._data

    def end(self) -> None:
        with self._cond:
            self.ended = True
            self._cond.notify_all()


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
            display.vvv(
                f"ESTABLISH HVSOCK CONNECTION TO {self._agent}"
                + (f" THROUGH {jump}" if jump else ""),
                host=self._agent,
            )
            if jump:
                self._jump = _Jump(
                    shlex.split(self.get_option("hvsock_jump_ssh")),
                    jump,
                    self.get_option("hvsock_jump_hvsock"),
                )
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
            + (f"; ssh said: {said}" if said else "")
        )

    def exec_command(
        self, cmd: str, in_data: bytes | None = None, sudoable: bool = True
    ) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        executable = self._play_context.executable or "/bin/sh"
        argv = [*shlex.split(executable), "-c", to_text(cmd)]
        display.vvv(
            f"EXEC {argv!r}" + (f" AS {self._user()}" if self._user() else ""), host=self._agent
        )
        if not (sudoable and self.become and self.become.expect_prompt()):
            result = self._exec(argv, in_data if in_data else b"", "running a command")
            return self._rc(result), result.stdout, result.stderr
        if self.become.name != "sudo":
            # su, doas and the like read the password from a terminal, and the agent
            # gives commands none; sudo -S reads it from the input.
            raise AnsibleError(
                f"hvsock: become_method {self.become.name} with a password needs a terminal, "
                "which the agent does not give commands: use become_method sudo (it reads "
                "the password from the input), or a become rule that needs no password"
            )
        password = to_bytes(self.become.get_option("become_pass") or "")
        answer = _PromptAnswer(self.become, password, in_data or b"")
        try:
            result = self._exec(
                argv,
                answer.pieces(),
                "running a command",
                stdout=answer.on_stdout,
                stderr=answer.on_stderr,
            )
        finally:
            answer.end()
        if answer.prompts > 1:
            raise AnsibleError(
                f"hvsock: incorrect {self.become.name} password (asked again "
                f"after it was given): {to_text(bytes(answer.err)).strip()}"
            )
        stderr = self.become.strip_become_prompt(bytes(answer.err))
        return self._rc(result), bytes(answer.out), stderr

    def _user(self) -> str | None:
        return self.get_option("remote_user") or None

    @staticmethod
    def _rc(result: hvsock.ExecResult) -> int:
        return result.exit_status if result.returncode < 0 else result.returncode

    def _exec(self, argv: list[str], data: object, what: str, **sinks: object) -> hvsock.ExecResult:
        try:
            return hvsock.exec(
                self._address,
                argv,
                input=data,  # type: ignore[arg-type]
                user=self._user(),
                timeout=self.get_option("hvsock_command_timeout"),
                connect_timeout=self.get_option("hvsock_timeout"),
                retries=self.get_option("hvsock_retries"),
                **sinks,  # type: ignore[arg-type]
            )
        except hvsock.RemoteError as e:
            # The agent answered and refused: no such user, another user not allowed.
            raise AnsibleError(
                f"hvsock: {what} was refused by the agent at {self._agent}: {e}"
            ) from e
        except hvsock.HvsockError as e:
            raise self._failure(what, e) from e

    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._agent)
        if not os.path.isfile(to_bytes(in_path, errors="surrogate_or_strict")):
            raise AnsibleFileNotFound(f"file or module does not exist: {in_path}")
        # Timestamped in ANSIBLE_DEBUG's log (benchmarks/bench_ansible.py times the
        # transfer apart from Ansible's own steps around it).
        display.debug(f"hvsock: put_file starting: {in_path}")
        if self._user():
            self._put_as_user(in_path, self._remote(out_path))
        else:
            self._copy(in_path, ":" + self._remote(out_path), "copying a file to the VM")
        display.debug("hvsock: put_file done")

    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._agent)
        display.debug(f"hvsock: fetch_file starting: {in_path}")
        if self._user():
            self._fetch_as_user(self._remote(in_path), out_path)
        else:
            self._copy(":" + self._remote(in_path), out_path, "copying a file from the VM")
        display.debug("hvsock: fetch_file done")

    # With ansible_user, files move through exec as that user (as sftp would as the ssh
    # login): the guest's permissions for that user apply, and what is put is theirs. The
    # cp service runs as the agent's user (root) and would bypass both.
    def _put_as_user(self, in_path: str, out_path: str) -> None:
        what = f"copying a file to the VM as {self._user()}"
        with open(to_bytes(in_path, errors="surrogate_or_strict"), "rb") as f:
            result = self._exec(
                ["/bin/sh", "-c", 'cat > "$1"', "sh", out_path],
                iter(lambda: f.read(PIECE), b""),
                what,
            )
        if result.returncode != 0:
            raise AnsibleError(
                f"hvsock: {what} failed: {to_text(result.stderr).strip() or self._rc(result)}"
            )

    def _fetch_as_user(self, in_path: str, out_path: str) -> None:
        what = f"copying a file from the VM as {self._user()}"
        local = to_bytes(out_path, errors="surrogate_or_strict")
        try:
            with open(local, "wb") as f:
                result = self._exec(["cat", "--", in_path], b"", what, stdout=f.write)
            if result.returncode != 0 or result.truncated:
                raise AnsibleError(
                    f"hvsock: {what} failed: "
                    + (
                        "the agent's max_output cut it short"
                        if result.truncated
                        else to_text(result.stderr).strip() or str(self._rc(result))
                    )
                )
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(local)
            raise

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
            hvsock.copy(
                self._cp(),
                source,
                dest,
                stdin=io.BytesIO(),
                stdout=io.BytesIO(),
                timeout=self.get_option("hvsock_timeout"),
                retries=self.get_option("hvsock_retries"),
            )
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
