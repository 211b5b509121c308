"""A real OpenSSH server on a loopback port, for the current user, with everything it
needs in one private directory: its own config, host key, client key, authorized_keys
and log. Nothing of the system's ssh configuration is read or changed (except that sshd
run as root insists on its privilege-separation directory, /run/sshd, which is made
when missing, as the Debian package's service does).

Used by the ssh jump tests (tests/host/test_ansible_jump.py) and by
benchmarks/bench_ansible.py (the ssh connection plugin's side of the comparison).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def sshd_missing() -> str | None:
    """Why no sshd can be started here (None: one can)."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is missing (apt-get install openssh-server)"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install openssh-client)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Sshd:
    """``with Sshd() as sshd:`` a running sshd; ``sshd.ssh_args`` logs in to it."""

    def __init__(self, base: Path | None = None, login_home: Path | None = None) -> None:
        """*login_home*: the ``HOME`` of the server's sessions instead of the user's own
        (sshd's ``SetEnv``), so bash, which a session started by sshd makes source
        ``~/.bashrc`` even for a command, sources that directory's one (none, or one of
        the caller's) rather than this machine's account's (here root's runs
        ``pyenv init``: a quarter of a second per command, which no guest pays)."""
        self.dir = Path(tempfile.mkdtemp(prefix="hvssh-", dir=str(base) if base else "/tmp"))
        self.login_home = login_home
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.port = 0
        self.log = self.dir / "sshd.log"
        self.key = self.dir / "id_ed25519"
        self.proc: subprocess.Popen[bytes] | None = None

    # -- set-up ----------------------------------------------------------------------------
    def _keygen(self, path: Path) -> None:
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hvsock-test", "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> Sshd:
        self.dir.chmod(0o700)
        self._keygen(self.dir / "host_ed25519")
        self._keygen(self.key)
        (self.dir / "authorized_keys").write_bytes(self.key.with_suffix(".pub").read_bytes())
        (self.dir / "authorized_keys").chmod(0o600)
        if os.geteuid() == 0:
            # sshd run as root refuses to start without it.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        config = self.dir / "sshd_config"
        last = ""
        for _ in range(5):  # a port taken between the probe and the bind: another one
            self.port = _free_port()
            config.write_text(
                f"Port {self.port}\nListenAddress 127.0.0.1\n"
                f"HostKey {self.dir / 'host_ed25519'}\n"
                f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
                f"PidFile {self.dir / 'sshd.pid'}\n"
                "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
                "PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n"
                "UsePAM no\nStrictModes no\nPrintMotd no\nPrintLastLog no\n"
                "LogLevel VERBOSE\nMaxStartups 100\nMaxSessions 100\n"
                # Many ssh starts at once (forks, a bench): no per-source throttling.
                + ("PerSourcePenalties no\n" if _knows_penalties() else "")
                + (f'SetEnv "HOME={self.login_home}"\n' if self.login_home else "")
            )
            self.log.write_bytes(b"")
            self.proc = subprocess.Popen(
                [SSHD, "-D", "-f", str(config), "-E", str(self.log)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                text = self.log.read_text(errors="replace")
                if f"listening on 127.0.0.1 port {self.port}" in text:
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
            last = self.log.read_text(errors="replace") + (
                self.proc.stderr.read().decode(errors="replace")
                if self.proc.poll() is not None and self.proc.stderr
                else ""
            )
            self._kill()
            if "Address already in use" not in last:
                break
        raise RuntimeError(f"sshd did not start: {last.strip()[-2000:]}")

    # -- use -------------------------------------------------------------------------------
    @property
    def destination(self) -> str:
        return f"{self.user}@127.0.0.1"

    def ssh_options(self, control: bool = False) -> list[str]:
        """ssh's options for this server: its key, port, a known_hosts of its own."""
        options = [
            "-F",
            "/dev/null",
            "-p",
            str(self.port),
            "-i",
            str(self.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={self.dir / 'known_hosts'}",
            "-o",
            "LogLevel=ERROR",
        ]
        if control:
            options += [
                "-o",
                "ControlMaster=auto",
                "-o",
                "ControlPersist=60s",
                "-o",
                f"ControlPath={self.dir}/cm-%C",
            ]
        return options

    def logins(self) -> int:
        """How many logins the server accepted so far."""
        return self.log.read_text(errors="replace").count("Accepted publickey")

    def stop_masters(self, sockets: Iterable[Path] | None = None) -> None:
        """End the ControlPersist masters left by ssh_options(control=True), or
        those listening on *sockets* (control paths of the caller's own)."""
        for sock in self.dir.glob("cm-*") if sockets is None else sockets:
            subprocess.run(
                [
                    "ssh",
                    *self.ssh_options(),
                    "-o",
                    f"ControlPath={sock}",
                    "-O",
                    "exit",
                    self.destination,
                ],
                capture_output=True,
                timeout=60,
                check=False,
            )

    # -- tear-down -------------------------------------------------------------------------
    def _kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # The session leader's group: the listener and every session it forked.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None

    def close(self) -> None:
        self.stop_masters()
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Sshd:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def _knows_penalties() -> bool:
    """PerSourcePenalties exists from OpenSSH 9.8 on; older sshd refuses the keyword."""
    done = subprocess.run(["ssh", "-V"], capture_output=True, text=True, timeout=30, check=False)
    version = (done.stderr or done.stdout).split("_", 1)[-1]
    try:
        major, minor = version.split("p", 1)[0].split(".")[:2]
        return (int(major), int(minor)) >= (9, 8)
    except ValueError:
        return False
