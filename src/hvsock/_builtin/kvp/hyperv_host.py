"""The Windows host side of KVP: a VM's guest items, and the host's items it pushes.

Reading: ``Msvm_KvpExchangeComponent`` (``root\\virtualization\\v2``) of the VM holds
``GuestExchangeItems`` (the guest's pool 1) and ``GuestIntrinsicExchangeItems`` (pool 2),
each item an embedded CIM-XML ``<INSTANCE CLASSNAME="Msvm_KvpExchangeDataItem">`` with
properties Name, Data and Source. Writing: ``Msvm_VirtualSystemManagementService``'s
``AddKvpItems`` / ``ModifyKvpItems`` / ``RemoveKvpItems(TargetSystem, DataItems[])``,
each item the same CIM-XML with Source 0 (pool 0, external); at most 128 items a call;
return value 0, or 4096 with a job to poll.

The only I/O is running a generated Windows PowerShell script; the same script is what
``--export ps1`` prints, to run by hand. The parsers and the script were written from
Microsoft's documentation and are tested on fixtures in the documented shape: this code
has NOT been run on Windows by this project.
"""

from __future__ import annotations

import json
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

from ..._core import kvp as codec
from ..._errors import ArgumentError, KvpError, VmNotFoundError
from ..._validate import quote
from ..._windows import vms as vmlib
from ..._windows.export import ps_quote

#: Items one AddKvpItems / ModifyKvpItems / RemoveKvpItems call takes.
BATCH = 128
#: Name and Data of a host item, in characters.
MAX_ITEM_TEXT = 1024
#: Seconds the script waits for one call's job.
JOB_TIMEOUT = 60
ITEM_CLASS = "Msvm_KvpExchangeDataItem"
ACTIONS = ("add", "modify", "remove", "set")
_METHODS = {"add": "AddKvpItems", "modify": "ModifyKvpItems", "remove": "RemoveKvpItems"}
#: The exit status the scripts use for "no such VM".
_NO_VM = 3


@dataclass(frozen=True)
class KvpItem:
    """One ``Msvm_KvpExchangeDataItem``: Name, Data, Source (0 external, 1 guest,
    2 guest intrinsic, 3 host facts)."""

    name: str
    data: str
    source: int

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "data": self.data, "source": self.source}


def parse_instance(text: str) -> KvpItem:
    """One embedded CIM-XML instance. Raises :class:`KvpError` when it is not one."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise KvpError(f"a KVP item is not well-formed CIM-XML ({exc}): {quote(text)}") from None
    if root.tag != "INSTANCE" or root.get("CLASSNAME") != ITEM_CLASS:
        raise KvpError(
            f"a KVP item is a {root.tag} of class {root.get('CLASSNAME')!r}, "
            f"not an INSTANCE of {ITEM_CLASS}"
        )
    props: dict[str, str | None] = {}
    for prop in root.iter("PROPERTY"):
        name = prop.get("NAME")
        if name is not None:
            value = prop.find("VALUE")
            props[name] = None if value is None else (value.text or "")
    name, data, source = props.get("Name"), props.get("Data"), props.get("Source")
    if name is None:
        raise KvpError(f"a KVP item has no Name: {quote(text)}")
    try:
        number = int(source) if source is not None else 0
    except ValueError:
        raise KvpError(f"a KVP item's Source is {quote(source)}, not a number") from None
    return KvpItem(name, data or "", number)


def instance_xml(name: str, data: str, source: int = 0) -> str:
    """The CIM-XML of one item, as the management service's methods take it."""
    props = (("Data", "string", data), ("Name", "string", name), ("Source", "uint16", str(source)))
    body = "".join(
        f"<PROPERTY NAME={quoteattr(n)} TYPE={quoteattr(t)}><VALUE>{escape(v)}</VALUE></PROPERTY>"
        for n, t, v in props
    )
    return f"<INSTANCE CLASSNAME={quoteattr(ITEM_CLASS)}>{body}</INSTANCE>"


@dataclass(frozen=True)
class GuestItems:
    """What a VM's KVP component shows the host: the guest's items and its intrinsics."""

    guest: tuple[KvpItem, ...]
    intrinsic: tuple[KvpItem, ...]

    def as_dict(self) -> dict[str, str]:
        """The guest's pool 1 by name, the last of duplicates winning."""
        return codec.latest((i.name, i.data) for i in self.guest)


def parse_guest_items(text: str) -> GuestItems:
    """What :func:`guest_items_script` prints: JSON with the two arrays of CIM-XML.

    Raises :class:`KvpError` for output of another shape.
    """
    try:
        doc = json.loads(text)
    except ValueError:
        raise KvpError(f"PowerShell printed something that is not JSON: {quote(text)}") from None
    if not isinstance(doc, dict):
        raise KvpError("PowerShell printed JSON that is not an object")
    out: list[tuple[KvpItem, ...]] = []
    for field in ("GuestExchangeItems", "GuestIntrinsicExchangeItems"):
        raw = doc.get(field) or []
        if isinstance(raw, str):  # ConvertTo-Json unwraps a one-element array
            raw = [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise KvpError(f"{field} is not a list of CIM-XML strings")
        out.append(tuple(parse_instance(x) for x in raw))
    return GuestItems(out[0], out[1])


# -- scripts ---------------------------------------------------------------------------


def _vm_filter(vm: str) -> str:
    """A WQL filter for a VM by id (GUID) or name; WQL escapes \\ and ' with a backslash."""
    if not isinstance(vm, str) or not vm.strip():
        raise ArgumentError(f"a VM must be a name or an id, not {quote(vm)}")
    try:
        return f"Name='{str(uuid.UUID(vm.strip().strip('{}'))).upper()}'"
    except ValueError:
        pass
    wql = vm.replace("\\", "\\\\").replace("'", "\\'")
    return f"ElementName='{wql}'"


_PRELUDE = """$ErrorActionPreference = 'Stop'
$ProgressPreference = 'SilentlyContinue'
[Console]::OutputEncoding = [Text.Encoding]::UTF8
$ns = 'root\\virtualization\\v2'
"""


def _find_vm(vm: str, cim: bool) -> str:
    get = (
        "Get-CimInstance -Namespace $ns -ClassName"
        if cim
        else "Get-WmiObject -Namespace $ns -Class"
    )
    return (
        f"$vm = @({get} Msvm_ComputerSystem -Filter {ps_quote(_vm_filter(vm))})\n"
        "if ($vm.Count -ne 1) {\n"
        f"    [Console]::Error.WriteLine('hvsock: ' + $vm.Count + ' VMs match ' + "
        f"{ps_quote(quote(vm))})\n"
        f"    exit {_NO_VM}\n"
        "}\n"
    )


def guest_items_script(vm: str) -> str:
    """A script that prints the VM's guest items as JSON (CIM cmdlets, read only)."""
    return (
        _PRELUDE + _find_vm(vm, cim=True) + "$kvp = Get-CimAssociatedInstance -InputObject $vm[0] "
        "-ResultClassName Msvm_KvpExchangeComponent\n"
        "ConvertTo-Json -Compress -InputObject ([pscustomobject]@{\n"
        "    GuestExchangeItems = @($kvp.GuestExchangeItems)\n"
        "    GuestIntrinsicExchangeItems = @($kvp.GuestIntrinsicExchangeItems)\n"
        "})\n"
    )


_WAIT = f"""function Wait-KvpJob($result, $what) {{
    if ($result.ReturnValue -eq 4096) {{
        $deadline = (Get-Date).AddSeconds({JOB_TIMEOUT})
        $job = [wmi]$result.Job
        while ($job.JobState -eq 3 -or $job.JobState -eq 4) {{
            if ((Get-Date) -gt $deadline) {{
                throw "${{what}}: the job still runs after {JOB_TIMEOUT} s"
            }}
            Start-Sleep -Milliseconds 100
            $job = [wmi]$result.Job
        }}
        if ($job.JobState -ne 7) {{ throw "${{what}} failed: $($job.ErrorDescription)" }}
    }} elseif ($result.ReturnValue -ne 0) {{
        throw "${{what}} failed with return value $($result.ReturnValue)"
    }}
}}
"""


def check_host_items(items: Sequence[tuple[str, str]]) -> None:
    """Raise :class:`ArgumentError` for an item the host would refuse."""
    for name, data in items:
        for what, text in (("name", name), ("data", data)):
            if not isinstance(text, str) or "\0" in text:
                raise ArgumentError(
                    f"a KVP item {what} must be text without NUL, not {quote(text)}"
                )
            if len(text) > MAX_ITEM_TEXT:
                raise ArgumentError(
                    f"KVP item {what} {quote(text)} is {len(text)} "
                    f"characters; the host takes at most {MAX_ITEM_TEXT}"
                )
        if not name:
            raise ArgumentError("a KVP item name cannot be empty")


def change_script(action: str, vm: str, items: Sequence[tuple[str, str]]) -> str:
    """A Windows PowerShell script that adds, modifies, removes or sets (modify, else add)
    the host's items (pool 0 of the guest) of *vm*, 128 items a call, waiting for each job.

    Raises :class:`ArgumentError` for an unknown action or an item the host would refuse.
    """
    if action not in ACTIONS:
        raise ArgumentError(f"action must be one of {', '.join(ACTIONS)}, not {quote(action)}")
    check_host_items(items)
    lines = [
        _PRELUDE + "$vmms = Get-WmiObject -Namespace $ns -Class "
        "Msvm_VirtualSystemManagementService\n" + _find_vm(vm, cim=False) + _WAIT
    ]
    for start in range(0, len(items), BATCH):
        batch = items[start : start + BATCH]
        what = f"items {start + 1}-{start + len(batch)}"
        xml = ",\n".join(f"    {ps_quote(instance_xml(n, d))}" for n, d in batch)
        lines.append(f"$items = @(\n{xml}\n)\n")
        if action == "set":
            # Add fails on an existing name and Modify on a missing one: try the whole
            # batch as a Modify, then item by item.
            lines.append(
                "try {\n"
                f"    Wait-KvpJob ($vmms.ModifyKvpItems($vm[0], $items)) 'ModifyKvpItems "
                f"({what})'\n"
                "} catch {\n"
                "    foreach ($item in $items) {\n"
                "        try { Wait-KvpJob ($vmms.ModifyKvpItems($vm[0], @($item))) "
                "'ModifyKvpItems' }\n"
                "        catch { Wait-KvpJob ($vmms.AddKvpItems($vm[0], @($item))) "
                "'AddKvpItems' }\n"
                "    }\n"
                "}\n"
            )
        else:
            method = _METHODS[action]
            lines.append(f"Wait-KvpJob ($vmms.{method}($vm[0], $items)) '{method} ({what})'\n")
    lines.append(f"Write-Output 'hvsock: {action}: {len(items)} item(s) done'\n")
    return "".join(lines)


def _run(script: str, vm: str, runner: vmlib.Runner | None) -> str:
    run = runner or vmlib.run_process
    return vmlib.run_powershell(
        script,
        run,
        exit_errors={
            _NO_VM: lambda said: VmNotFoundError(
                f"no single Hyper-V VM named or with id {quote(vm)} ({said}); `hvsock vms` lists "
                "them"
            )
        },
    )


def read_guest_items(vm: str, *, runner: vmlib.Runner | None = None) -> GuestItems:
    """The guest's items of *vm* (a name or an id), on the Hyper-V host.

    Raises :class:`UnsupportedError` without PowerShell, :class:`VmNotFoundError`,
    :class:`KvpError` for output it cannot read, :class:`HvsockError` when it fails.
    """
    return parse_guest_items(_run(guest_items_script(vm), vm, runner))


def change_host_items(
    action: str, vm: str, items: Sequence[tuple[str, str]], *, runner: vmlib.Runner | None = None
) -> None:
    """Add / modify / remove / set the host's items of *vm* (needs an administrator)."""
    _run(change_script(action, vm, items), vm, runner)
