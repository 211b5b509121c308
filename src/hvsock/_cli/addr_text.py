"""``hvsock addr`` as text: each line a value and what it means, no value twice.

Addresses are printed in their one canonical form (``str(address)``, the form
``parse_address`` reads back); names such as ``host`` or ``parent`` appear in the
explanation beside the number or GUID they stand for. ``--json`` keeps the raw
fields of :func:`hvsock.describe_address`.
"""

from __future__ import annotations

from .._core import ids
from .._core.addresses import (
    Address,
    HybridAddress,
    HyperVAddress,
    NamedHybridAddress,
    NamedVmAddress,
    NamedVsockAddress,
    TcpAddress,
    VsockAddress,
    describe_address,
)

#: What each well-known CID means.
CID_MEANINGS = {
    ids.CID_HYPERVISOR: "hypervisor: the hypervisor itself",
    ids.CID_LOCAL: "local: this machine, through the vsock_loopback transport",
    ids.CID_HOST: "host: the host, as its guests reach it",
    ids.CID_ANY: "any: every CID of this machine (for listening)",
}
#: What each well-known VM id means.
VM_MEANINGS = {
    ids.WILDCARD: "wildcard: every partition (for listening on the host)",
    ids.BROADCAST: "broadcast: every partition",
    ids.CHILDREN: "children: the VMs of this host (for listening)",
    ids.LOOPBACK: "loopback: this same partition (no VM needed)",
    ids.PARENT: "parent: the host, as a VM reaches it",
    ids.SILOHOST: "silohost: the host of a silo (Windows containers)",
}

Row = tuple[str, str, str]


def explain(address: Address) -> list[Row]:
    """(label, value, meaning) rows for *address*; a view equal to one shown is left out."""
    info = describe_address(address)
    rows: list[Row] = [("address", str(address), f"{address.kind} address, canonical form")]
    if isinstance(address, VsockAddress):
        cid = "any" if address.cid == ids.CID_ANY else str(address.cid)  # as str(address)
        rows.append(("cid", cid, CID_MEANINGS.get(address.cid, "a VM's CID")))
        rows.append(_port_row(address.port))
        if address.port != ids.PORT_ANY and address.port < ids.PRIVILEGED_PORTS_BELOW:
            rows.append(
                (
                    "note",
                    "privileged port",
                    f"listening on a port below "
                    f"{ids.PRIVILEGED_PORTS_BELOW} needs root (CAP_NET_BIND_SERVICE)",
                )
            )
        if not info["hyperv_listen_ok"]:
            rows.append(
                (
                    "note",
                    "not for Hyper-V listeners",
                    "the hv_sock transport listens "
                    f"on ports up to {ids.HV_SOCK_MAX_LISTEN_PORT} only",
                )
            )
        if address.port != ids.PORT_ANY:
            rows.append(
                (
                    "service id",
                    str(info["service_id"]),
                    "the Hyper-V service id of this port (what the Windows host registers)",
                )
            )
        if info["hyperv_view"] is not None and address.port != ids.PORT_ANY:
            rows.append(
                (
                    "host side",
                    str(info["hyperv_view"]),
                    "the same endpoint as a Windows host names it",
                )
            )
        return rows
    if isinstance(address, (HyperVAddress, NamedVmAddress)):
        if isinstance(address, HyperVAddress):
            rows.append(
                (
                    "vm id",
                    str(address.vm_id),
                    VM_MEANINGS.get(address.vm_id, "a VM's id (`hvsock vms` lists them)"),
                )
            )
        else:
            rows.append(
                ("vm", "wsl" if address.is_wsl else address.vm_name or "", str(info["vm_id_from"]))
            )
        port = address.port
        rows.append(
            (
                "service id",
                str(address.service_id),
                f"template id of vsock port {port}"
                if port is not None
                else "not a template id: Linux guests cannot reach it by a port",
            )
        )
        guest = info.get("linux_guest_connects_to")
        if guest is not None:
            rows.append(
                (
                    "guest side",
                    str(guest),
                    "what a Linux guest connects to, to reach this service on its host",
                )
            )
        view = info.get("vsock_view")
        if view is not None and view != guest:
            rows.append(("as vsock", str(view), "this address in vsock terms, on the same machine"))
        return rows
    if isinstance(address, (NamedVsockAddress, NamedHybridAddress)):
        rows.append(("vm", address.vm_name, str(info["looked_up"])))
        rows.append(("port", str(address.port), "the guest's vsock port"))
        return rows
    if isinstance(address, HybridAddress):
        rows.append(
            (
                "vmm socket",
                address.uds_path,
                "the VMM's Unix socket: connecting sends `CONNECT <port>` through it to the guest",
            )
        )
        rows.append(("port", str(address.port), "the guest's vsock port"))
        rows.append(
            (
                "listen path",
                address.listen_path,
                f"where a host listener for guest connections to port {address.port} goes",
            )
        )
        return rows
    if isinstance(address, TcpAddress):
        rows.append(("host", address.host, "host name or IP address"))
        rows.append(("port", str(address.port), "TCP port"))
        return rows
    rows.append(
        (
            "path",
            address.path,
            "abstract name (Linux; no file)" if address.abstract else "socket file",
        )
    )
    return rows


def _port_row(port: int) -> Row:
    if port == ids.PORT_ANY:
        return ("port", "any", "any: the kernel picks a free port (for listening)")
    return ("port", str(port), "vsock port")


def render(rows: list[Row]) -> str:
    label_w = max(len(r[0]) for r in rows)
    value_w = max(len(r[1]) for r in rows)
    return "".join(
        f"{label:<{label_w}}  {value:<{value_w}}  {meaning}".rstrip() + "\n"
        for label, value, meaning in rows
    )
