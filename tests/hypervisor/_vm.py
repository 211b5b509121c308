"""L1's handle on the nested guest (L2): boot it with QEMU, wait for its harness, call
steps, reboot it, power it off.

Runs in L1 only (pytest there). QEMU boots the same Debian kernel as L1 with the
initramfs scripts/hypervisor-tests built, ``-name l2 -device
vhost-vsock-pci,guest-cid=3`` (so ``vsock://name:l2:<port>`` names it) and L1's root
over 9p; every wait has a deadline, and a QEMU that exits early fails
the wait at once with the end of L2's console log.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hvsock

from .guest import GUEST_CID, HARNESS_PORT, READY_PORT

#: L2 boot (~90 s) plus the harness's start (Python over nested 9p) under nested
#: emulation on a busy 2-core machine: generous, but bounded.
BOOT_TIMEOUT = float(os.environ.get("HVSOCK_HV_BOOT_TIMEOUT", "900"))
#: Per-test bound: the first test pays for L2's boot (the session fixture).
TEST_TIMEOUT = BOOT_TIMEOUT + 600
#: A minimal firmware that loads -kernel directly (Debian's qemu-system-data has it).
QBOOT = "/usr/share/qemu/qboot.rom"
#: The project's directory: the same path in L1 and L2 (L2 sees L1's root).
PROJECT = str(Path(__file__).resolve().parents[2])
L2_MEMORY_MB = 768
#: L2's name on L1's QEMU command line: what `hvsock vms` lists and vsock://name: takes.
L2_NAME = "l2"


class GuestError(AssertionError):
    """L2 did not boot, its harness did not start, or QEMU died."""


class Guest:
    """The nested guest. :meth:`boot` starts QEMU and waits for the harness."""

    def __init__(self, state: Path, kernel: str) -> None:
        self.state = state
        self.kernel = kernel
        self.project = PROJECT
        self.console = state / "l2-console.log"
        self.qemu: subprocess.Popen[bytes] | None = None
        self.client: hvsock.RpcClient | None = None
        #: One entry per L2 boot: seconds from QEMU start (or reboot) to ready, and
        #: the harness's own start-up times.
        self.boots: list[dict[str, float]] = []
        # Bound before L2 exists, so its first announce finds someone listening.
        self.ready_listener = hvsock.listen(f"vsock://any:{READY_PORT}")

    # -- life cycle -------------------------------------------------------------
    def qemu_argv(self) -> list[str]:
        # -nodefaults and qboot: no VGA, NIC or disks to probe, no SeaBIOS; no_timer_check
        # skips the IO-APIC timer test that crawls under nested emulation.
        return [
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            str(L2_MEMORY_MB),
            "-smp",
            "1",
            "-name",
            L2_NAME,
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-monitor",
            "none",
            *(["-bios", QBOOT] if os.path.exists(QBOOT) else []),
            "-kernel",
            self.kernel,
            "-initrd",
            str(self.state / "l2.cpio"),
            "-append",
            "console=ttyS0 quiet panic=-1 no_timer_check mitigations=off",
            "-device",
            f"vhost-vsock-pci,guest-cid={GUEST_CID}",
            "-virtfs",
            "local,path=/,mount_tag=root,security_model=none,readonly=on,multidevs=remap",
            "-serial",
            f"file:{self.console}",
        ]

    def boot(self) -> dict[str, float]:
        if self.qemu is not None:
            raise RuntimeError("L2 is already running")
        started = time.monotonic()
        with open(self.state / "qemu.out", "ab") as out:
            self.qemu = subprocess.Popen(
                self.qemu_argv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self._wait_ready(started, "boot")

    def reboot(self, on_rebooting: Callable[[], None] | None = None) -> dict[str, float]:
        """Reboot L2 from inside (the reboot syscall; QEMU resets, the same process and
        CID); *on_rebooting* is called once L2 took the request. Waits for the harness."""
        started = time.monotonic()
        self.call("reboot")
        self._drop_client()
        if on_rebooting is not None:
            on_rebooting()
        return self._wait_ready(started, "reboot")

    def power_off(self) -> None:
        """Pull the plug: kill QEMU (no shutdown in the guest)."""
        self._drop_client()
        if self.qemu is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.qemu.pid, signal.SIGKILL)
            self.qemu.wait(30)
            self.qemu = None

    def close(self) -> None:
        self.power_off()
        self.ready_listener.close()

    # -- steps ------------------------------------------------------------------------
    def call(self, step: str, timeout: float = 300.0, **params: Any) -> Any:
        """Run *step* in L2 with *params*; its result (RemoteError: it failed in L2)."""
        if self.client is None:
            raise GuestError("L2's harness is not connected (L2 was powered off?)")
        self.client.sock.settimeout(timeout)
        return self.client.call(step, params)

    def serve(self, kind: str, port: int, **params: Any) -> int:
        """Host a service of *kind* on vsock://any:*port* in L2 (see guest/services.py)."""
        result: int = self.call("serve", kind=kind, port=port, **params)
        return result

    # -- diagnostics ----------------------------------------------------------------
    def note(self, line: str) -> None:
        """Add *line* to the tier's timing report (scripts/hypervisor-tests prints it)."""
        with open(self.state / "times", "a") as f:
            f.write(line + "\n")

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return "(no console log)"
        return "\n".join(text.splitlines()[-lines:])

    def owned_fds(self) -> set[int]:
        """Descriptors this object holds for the session (not a test's leak)."""
        fds = {self.ready_listener.fileno()}
        if self.client is not None:
            fds.add(self.client.sock.fileno())
        return fds

    # -- internals ----------------------------------------------------------------------
    def _drop_client(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    def _wait_ready(self, started: float, what: str) -> dict[str, float]:
        deadline = started + BOOT_TIMEOUT
        announcement = b""
        while True:
            if self.qemu is None or self.qemu.poll() is not None:
                raise GuestError(
                    f"QEMU exited during L2's {what} "
                    f"({None if self.qemu is None else self.qemu.returncode});"
                    f" L2's console:\n{self.console_tail()}"
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise GuestError(
                    f"L2's harness did not report ready within {BOOT_TIMEOUT:.0f} s"
                    f" of its {what}; L2's console:\n{self.console_tail()}"
                )
            # Short slices, so a QEMU that died is noticed within seconds.
            self.ready_listener.settimeout(min(left, 5.0))
            try:
                conn, peer = self.ready_listener.accept()
            except TimeoutError:
                continue
            with conn:
                if peer[0] != GUEST_CID:
                    continue
                conn.settimeout(60)
                announcement = b""
                while chunk := conn.recv(4096):
                    announcement += chunk
            break
        ready = time.monotonic()
        record: dict[str, float] = {f"{what}_to_ready_s": round(ready - started, 1)}
        record.update(json.loads(announcement))
        self.boots.append(record)
        sock = hvsock.connect(f"vsock://{GUEST_CID}:{HARNESS_PORT}", timeout=30, retries=5)
        self.client = hvsock.RpcClient(sock)
        return record
