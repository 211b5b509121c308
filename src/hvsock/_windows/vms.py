"""Finding VMs: Hyper-V VMs by name, WSL 2's utility VM, and resolving named addresses.

The only I/O is running ``powershell.exe`` and ``wsl.exe`` through a *runner*
(:func:`run_process` by default). Everything else parses what they print, so it is
tested on Linux with recorded outputs fed through a fake runner.

Sources, in order: ``Get-VM`` (the Hyper-V PowerShell module), else CIM
(``Msvm_ComputerSystem`` in ``root/virtualization/v2``, built into Windows); for
WSL, the ``--vm-id`` argument of the ``wslhost.exe`` processes, else
``wsl.exe -- wslinfo --vm-id`` (which starts WSL if it is not running, so only
resolution uses it).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .._core import ids
from .._core.addresses import (
    NAMED_ADDRESS_TYPES,
    Address,
    NamedVmAddress,
    SocketAddress,
    parse_address,
)
from .._errors import (
    AddressError,
    HvsockError,
    UnreachableError,
    UnsupportedError,
    VmNotFoundError,
)

POWERSHELL = "powershell.exe"
WSL = "wsl.exe"
#: Seconds one program may take; PowerShell's first start after boot is slow.
RUN_TIMEOUT = 60.0

SOURCE_GET_VM = "Get-VM"
SOURCE_CIM = "CIM"
SOURCE_WSLHOST = "wslhost.exe"
SOURCE_WSLINFO = "wslinfo"
WSL_SOURCES = (SOURCE_WSLHOST, SOURCE_WSLINFO)

# UTF-8 output (the console code page would mangle non-ASCII VM names), no
# progress records on stderr, and any error ends the script with exit status 1.
_PRELUDE = (
    "$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'; "
    "[Console]::OutputEncoding = [Text.Encoding]::UTF8; "
)
# [string] casts: Windows PowerShell 5.1 would print the State enum as a number.
GET_VM_SCRIPT = _PRELUDE + (
    "ConvertTo-Json -Compress -InputObject @(Get-VM | ForEach-Object { [pscustomobject]@{ "
    "Name = $_.Name; Id = [string]$_.Id; State = [string]$_.State } })"
)
CIM_SCRIPT = _PRELUDE + (
    "ConvertTo-Json -Compress -InputObject @(Get-CimInstance -Namespace root/virtualization/v2 "
    "-ClassName Msvm_ComputerSystem | ForEach-Object { [pscustomobject]@{ "
    "ElementName = $_.ElementName; Name = $_.Name; EnabledState = $_.EnabledState } })"
)
WSLHOST_SCRIPT = _PRELUDE + (
    "ConvertTo-Json -Compress -InputObject @(Get-CimInstance -ClassName Win32_Process "
    "-Filter \"Name = 'wslhost.exe'\" | ForEach-Object { $_.CommandLine })"
)
WSLINFO_ARGV = (WSL, "--", "wslinfo", "--vm-id")
#: The note when no wslhost.exe names a VM: normal, WSL is just not running.
WSL_NOT_RUNNING = "wslhost.exe: no such process names a VM id (WSL is not running)"

#: Get-VM's VMState and CIM's EnabledState numbers, for output that has numbers.
STATE_NAMES = {
    2: "Running",
    3: "Off",
    4: "Stopping",
    6: "Saved",
    9: "Paused",
    10: "Starting",
    11: "Reset",
    32768: "Paused",
    32769: "Saved",
    32770: "Starting",
    32773: "Saving",
    32774: "Stopping",
    32776: "Pausing",
    32777: "Resuming",
}


@dataclass(frozen=True)
class ProcessResult:
    """What a finished program left: its exit status and its raw output."""

    returncode: int
    stdout: bytes = b""
    stderr: bytes = b""


#: Runs *argv* with a timeout in seconds. Raises FileNotFoundError when the program
#: does not exist, TimeoutError when it takes too long.
Runner = Callable[[Sequence[str], float], ProcessResult]


def run_process(argv: Sequence[str], timeout: float) -> ProcessResult:
    """The real runner: no shell, no stdin, output captured."""
    # WSL_UTF8: wsl.exe's own messages are UTF-16 unless asked otherwise.
    env = dict(os.environ, WSL_UTF8="1")
    try:
        done = subprocess.run(
            list(argv),
            capture_output=True,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(f"{argv[0]} did not finish within {timeout:g} s") from exc
    return ProcessResult(done.returncode, done.stdout, done.stderr)


def powershell_argv(script: str) -> list[str]:
    """The command line that runs *script*: -EncodedCommand needs no quoting rules."""
    encoded = base64.b64encode(script.encode("utf-16-le")).decode("ascii")
    return [POWERSHELL, "-NoLogo", "-NoProfile", "-NonInteractive", "-EncodedCommand", encoded]


def decode_output(data: bytes) -> str:
    """Program output as text: UTF-16 (wsl.exe's own messages) or UTF-8."""
    if data.startswith(b"\xff\xfe") or (len(data) >= 2 and data[1:2] == b"\0"):
        return data.decode("utf-16", errors="replace").lstrip("\ufeff")
    return data.decode("utf-8-sig", errors="replace")


@dataclass(frozen=True)
class VmInfo:
    """One VM: its name, id and state (``"Running"``, ``"Off"``, ...) and where that came from."""

    name: str
    vm_id: uuid.UUID
    state: str
    source: str

    @property
    def running(self) -> bool:
        # Get-VM also has RunningCritical: running, with a storage problem.
        return self.state.startswith("Running")

    @property
    def is_wsl(self) -> bool:
        return self.source in WSL_SOURCES

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "id": str(self.vm_id),
            "state": self.state,
            "running": self.running,
            "wsl": self.is_wsl,
            "source": self.source,
        }


@dataclass(frozen=True)
class VmDiscovery:
    """What :func:`discover_vms` found, and why any source gave nothing."""

    vms: tuple[VmInfo, ...]
    problems: tuple[str, ...]


# -- parsing what the programs print (pure) -----------------------------------


def _json_items(text: str, what: str) -> list[object]:
    text = text.strip()
    if not text:
        return []  # PowerShell prints nothing for an empty pipeline
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise HvsockError(
            f"could not read {what}'s output as JSON ({exc}): {text[:120]!r}"
        ) from None
    if data is None:
        return []
    # -InputObject @(...) prints a list; older forms print one object bare.
    return data if isinstance(data, list) else [data]


def _field(item: object, key: str, what: str) -> object:
    if not isinstance(item, dict):
        raise HvsockError(
            f"{what}'s output has {type(item).__name__} where a VM record "
            f"belongs: {str(item)[:80]!r}"
        )
    if key not in item:
        raise HvsockError(f"{what}'s output lacks {key!r} in {str(item)[:120]!r}")
    return item[key]


def _state_name(value: object, what: str) -> str:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return STATE_NAMES.get(value, f"state {value}")
    raise HvsockError(f"{what}'s output has a state {value!r} that is neither a name nor a number")


def _guid(value: object, what: str) -> uuid.UUID:
    if not isinstance(value, str):
        raise HvsockError(f"{what} gave a VM id {value!r} that is not text")
    try:
        return ids.parse_guid(value, what="VM id")
    except AddressError as exc:
        raise HvsockError(f"{what} gave a VM id that is not a GUID: {exc}") from None


def parse_get_vm(text: str) -> list[VmInfo]:
    """VMs from :data:`GET_VM_SCRIPT`'s JSON (``Name``, ``Id``, ``State``)."""
    vms = []
    for item in _json_items(text, SOURCE_GET_VM):
        name = _field(item, "Name", SOURCE_GET_VM)
        if not isinstance(name, str):
            raise HvsockError(f"Get-VM gave a VM name {name!r} that is not text")
        vm_id = _guid(_field(item, "Id", SOURCE_GET_VM), SOURCE_GET_VM)
        state = _state_name(_field(item, "State", SOURCE_GET_VM), SOURCE_GET_VM)
        vms.append(VmInfo(name, vm_id, state, SOURCE_GET_VM))
    return vms


def parse_cim(text: str) -> list[VmInfo]:
    """VMs from :data:`CIM_SCRIPT`'s JSON; the host's own entry (Name not a GUID) is skipped."""
    vms = []
    for item in _json_items(text, SOURCE_CIM):
        raw_id = _field(item, "Name", SOURCE_CIM)
        try:
            vm_id = ids.parse_guid(raw_id, what="VM id") if isinstance(raw_id, str) else None
        except AddressError:
            vm_id = None
        if vm_id is None:
            continue  # Msvm_ComputerSystem also lists the host, by its computer name
        name = _field(item, "ElementName", SOURCE_CIM)
        if not isinstance(name, str):
            raise HvsockError(f"CIM gave a VM name {name!r} that is not text")
        state = _state_name(_field(item, "EnabledState", SOURCE_CIM), SOURCE_CIM)
        vms.append(VmInfo(name, vm_id, state, SOURCE_CIM))
    return vms


def split_command_line(line: str) -> list[str]:
    """Split a Windows command line into arguments (double quotes group, and are removed)."""
    args: list[str] = []
    current: list[str] = []
    quoted = in_arg = False
    for c in line:
        if c == '"':
            quoted = not quoted
            in_arg = True
        elif c in " \t" and not quoted:
            if in_arg:
                args.append("".join(current))
                current, in_arg = [], False
        else:
            current.append(c)
            in_arg = True
    if in_arg:
        args.append("".join(current))
    return args


def vm_id_from_wslhost(command_line: str) -> uuid.UUID | None:
    """The ``--vm-id`` of a ``wslhost.exe`` command line; None when it has none.

    e.g. ``wslhost.exe --vm-id {f6446e02-236e-4b24-9916-2d4ad9a1096f} --handle 1664``.
    """
    if not isinstance(command_line, str):
        raise HvsockError(
            f"a wslhost.exe command line must be text, not {type(command_line).__name__}"
        )
    args = split_command_line(command_line)
    for i, arg in enumerate(args):
        if arg.lower() == "--vm-id":
            if i + 1 == len(args):
                raise HvsockError(f"wslhost.exe's --vm-id has no value: {command_line[:200]!r}")
            value = args[i + 1]
        elif arg.lower().startswith("--vm-id="):
            value = arg[len("--vm-id=") :]
        else:
            continue
        try:
            return ids.parse_guid(value, what="wslhost.exe's --vm-id")
        except AddressError as exc:
            raise HvsockError(str(exc)) from None
    return None


def parse_wslhost(text: str) -> list[uuid.UUID]:
    """Distinct VM ids from :data:`WSLHOST_SCRIPT`'s JSON list of command lines.

    A null command line (another user's process, hidden without elevation) is skipped.
    """
    found: list[uuid.UUID] = []
    for line in _json_items(text, "Win32_Process"):
        if line is None:
            continue
        if not isinstance(line, str):
            raise HvsockError(f"Win32_Process gave a command line {line!r} that is not text")
        vm_id = vm_id_from_wslhost(line)
        if vm_id is not None and vm_id not in found:
            found.append(vm_id)
    return found


def parse_wslinfo(data: bytes) -> uuid.UUID:
    """The VM id ``wslinfo --vm-id`` printed (GUID, braces optional)."""
    text = decode_output(data).strip()
    if text == "wsl1":
        raise VmNotFoundError(
            "the default WSL distribution runs under WSL 1, which has no VM and no Hyper-V "
            "sockets; convert it with `wsl --set-version <distro> 2`"
        )
    try:
        return ids.parse_guid(text, what="wslinfo --vm-id's output")
    except AddressError:
        raise VmNotFoundError(
            f"`wsl.exe -- wslinfo --vm-id` printed {text[:200]!r}, not a VM id; it needs WSL "
            "2.0 or newer (`wsl --update`)"
        ) from None


# -- running the programs -------------------------------------------------------


def explain_powershell_error(message: str) -> str:
    """A PowerShell error in plain words, with what to do."""
    flat = " ".join(message.split())
    lowered = flat.lower()
    if "is not recognized as the name of a cmdlet" in lowered and "get-vm" in lowered:
        return (
            "Get-VM is not installed (the Hyper-V PowerShell module); install it with "
            "`Enable-WindowsOptionalFeature -Online -FeatureName "
            "Microsoft-Hyper-V-Management-PowerShell`, or rely on CIM"
        )
    if "invalid namespace" in lowered or "0x8004100e" in lowered:
        return "Hyper-V is not enabled on this machine (no root/virtualization/v2 namespace)"
    if (
        "required permission" in lowered
        or "access denied" in lowered
        or "access is denied" in lowered
        or "0x80041003" in lowered
    ):
        return (
            "not allowed to list VMs: run as an administrator or as a member of the "
            "'Hyper-V Administrators' group"
        )
    return flat[:300] or "it failed and printed nothing"


def run_powershell(
    script: str,
    runner: Runner,
    *,
    exit_errors: Mapping[int, Callable[[str], HvsockError]] | None = None,
) -> str:
    """Run *script*; return what it printed. Raises UnsupportedError without PowerShell.

    *exit_errors* maps the script's own exit codes to the error to raise (given what it
    wrote to stderr); any other failure is an HvsockError explaining PowerShell's message.
    """
    try:
        result = runner(powershell_argv(script), RUN_TIMEOUT)
    except FileNotFoundError:
        raise UnsupportedError(
            f"{POWERSHELL} was not found: VMs are found with Windows PowerShell on the "
            "Hyper-V host; run this there (inside a Linux guest, `hvsock doctor` tells "
            "what it can)"
        ) from None
    except OSError as exc:
        raise HvsockError(f"{POWERSHELL} could not run: {exc}") from exc
    if result.returncode != 0:
        said = decode_output(result.stderr) or decode_output(result.stdout)
        if exit_errors and result.returncode in exit_errors:
            raise exit_errors[result.returncode](" ".join(said.split())[:300])
        raise HvsockError(explain_powershell_error(said))
    return decode_output(result.stdout)


def find_hyperv_vms(runner: Runner | None = None) -> tuple[list[VmInfo], list[str]]:
    """Hyper-V VMs (Get-VM, else CIM), and why a source failed.

    Raises :class:`UnsupportedError` when PowerShell itself is missing.
    """
    runner = runner or run_process
    problems: list[str] = []
    for source, script, parse in (
        (SOURCE_GET_VM, GET_VM_SCRIPT, parse_get_vm),
        (SOURCE_CIM, CIM_SCRIPT, parse_cim),
    ):
        try:
            return parse(run_powershell(script, runner)), problems
        except UnsupportedError:
            raise
        except HvsockError as exc:
            problems.append(f"{source}: {exc}")
    return [], problems


def find_wsl_vm_ids(
    runner: Runner | None = None, *, start_wsl: bool = False
) -> tuple[list[uuid.UUID], list[str]]:
    """WSL 2's VM ids (from wslhost.exe), and why none was found.

    With *start_wsl*, fall back to ``wsl.exe -- wslinfo --vm-id``, which starts
    WSL's default distribution when it is not running.
    """
    runner = runner or run_process
    problems: list[str] = []
    try:
        found = parse_wslhost(run_powershell(WSLHOST_SCRIPT, runner))
    except HvsockError as exc:
        found = []
        problems.append(f"wslhost.exe: {exc}")
    else:
        if not found:
            problems.append(WSL_NOT_RUNNING)
    if found or not start_wsl:
        return found, problems
    try:
        result = runner(WSLINFO_ARGV, RUN_TIMEOUT)
    except FileNotFoundError:
        problems.append(f"{WSL} was not found: WSL is not installed")
        return [], problems
    except OSError as exc:
        problems.append(f"{WSL} could not run: {exc}")
        return [], problems
    if result.returncode != 0:
        said = " ".join((decode_output(result.stderr) or decode_output(result.stdout)).split())
        problems.append(f"`wsl.exe -- wslinfo --vm-id` failed: {said[:300] or 'no output'}")
        return [], problems
    try:
        return [parse_wslinfo(result.stdout)], problems
    except HvsockError as exc:
        problems.append(str(exc))
        return [], problems


def discover_vms(runner: Runner | None = None) -> VmDiscovery:
    """Every VM this user can see: Hyper-V VMs, and WSL 2's VM if it runs.

    Never starts anything. Raises :class:`UnsupportedError` without PowerShell.
    """
    vms, problems = find_hyperv_vms(runner)
    wsl_ids, wsl_problems = find_wsl_vm_ids(runner)
    found = [*vms, *(VmInfo("WSL", vm_id, "Running", SOURCE_WSLHOST) for vm_id in wsl_ids)]
    return VmDiscovery(tuple(found), tuple(problems + (wsl_problems if not wsl_ids else [])))


# -- resolution -------------------------------------------------------------------


def choose_wsl_vm(wsl_ids: Sequence[uuid.UUID], problems: Sequence[str] = ()) -> uuid.UUID:
    """The one WSL VM id among *wsl_ids*; *problems* say why there may be none.

    Raises :class:`VmNotFoundError` for none, :class:`AddressError` for several.
    """
    if len(wsl_ids) > 1:
        raise AddressError(
            "several WSL VMs are running (" + ", ".join(map(str, wsl_ids)) + "); name "
            "the one you mean by id: hvsock://<VM id>/<service>"
        )
    if not wsl_ids:
        why = f" ({'; '.join(problems)})" if problems else ""
        raise VmNotFoundError(
            f"WSL 2's VM was not found{why}; start WSL (`wsl`) and retry; inside WSL, "
            "`wslinfo --vm-id` prints its id"
        )
    return wsl_ids[0]


def choose_vm(vms: Sequence[VmInfo], vm_name: str, problems: Sequence[str] = ()) -> VmInfo:
    """The running Hyper-V VM named *vm_name* (any case) among *vms*.

    Raises :class:`VmNotFoundError` when none has the name (*problems* say why
    the list may be incomplete), :class:`UnreachableError` when it is not running,
    :class:`AddressError` when several share the name.
    """
    matches = [vm for vm in vms if not vm.is_wsl and vm.name.casefold() == vm_name.casefold()]
    if not matches:
        if problems and not vms:
            raise VmNotFoundError(f"could not look up VM {vm_name!r}: " + "; ".join(problems))
        names = ", ".join(sorted(repr(vm.name) for vm in vms if not vm.is_wsl)) or "none"
        raise VmNotFoundError(
            f"no Hyper-V VM is named {vm_name!r} (VMs here: {names}); check the name with "
            "`hvsock vms`"
        )
    if len(matches) > 1:
        raise AddressError(
            f"{len(matches)} VMs are named {vm_name!r} (ids "
            + ", ".join(str(vm.vm_id) for vm in matches)
            + "); name the one you mean by id: hvsock://<VM id>/<service>"
        )
    vm = matches[0]
    if not vm.running:
        raise UnreachableError(
            f"VM {vm.name!r} is {vm.state}, not running; start it (Start-VM -Name "
            f"'{vm.name}') and retry"
        )
    return vm


def resolve_vm_id(vm_name: str | None, runner: Runner | None = None) -> uuid.UUID:
    """The id of the running VM named *vm_name* (None: WSL 2's VM, started if need be).

    Raises as :func:`choose_vm` and :func:`choose_wsl_vm`.
    """
    if vm_name is None:
        return choose_wsl_vm(*find_wsl_vm_ids(runner, start_wsl=True))
    vms, problems = find_hyperv_vms(runner)
    return choose_vm(vms, vm_name, problems).vm_id


def resolve_address(address: Address | str, runner: Runner | None = None) -> SocketAddress:
    """*address* with a named VM (``hvsock://name:MyVM/...``, ``hvsock://wsl/...``) looked up.

    Other addresses come back as they are. Runs PowerShell (about a second) for a
    named VM; resolve once and reuse the result when connecting often. Raises as
    :func:`resolve_vm_id`, and :class:`UnsupportedError` where PowerShell is missing.
    """
    addr = parse_address(address)
    if isinstance(addr, NamedVmAddress):
        return addr.with_vm_id(resolve_vm_id(addr.vm_name, runner))
    if isinstance(addr, NAMED_ADDRESS_TYPES):
        raise AddressError(
            f"{addr} names a VM of a KVM host, not a Hyper-V VM: hvsock.resolve_address looks it up"
        )
    return addr
