"""The address model: one table driven both ways, conversions, and properties."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvsock import (
    AddressError,
    HybridAddress,
    HyperVAddress,
    TcpAddress,
    UnixAddress,
    VsockAddress,
    describe_address,
    parse_address,
)
from hvsock.sockets import CID_ANY, CID_HOST, CID_HYPERVISOR, CID_LOCAL, PORT_ANY
from hvsock.windows import (
    BROADCAST,
    CHILDREN,
    LOOPBACK,
    PARENT,
    SILOHOST,
    WILDCARD,
    guest_view,
    host_view,
    service_id_for_port,
)

U32 = 0xFFFFFFFF
# The seed's example: port 2761 is this template service id.
SEED_PORT = 2761
SEED_SID = uuid.UUID("00000ac9-facb-11e6-bd58-64006a7986d3")
SEED_SID_TEXT = "00000ac9-facb-11e6-bd58-64006a7986d3"
# A non-template service id (the built-in "VM Session Service") and a made-up VM id.
SESSION_SID = uuid.UUID("999e53d4-3d5c-4c3e-8779-bed06ec056e1")
VM = uuid.UUID("6f1c0e5a-21b3-4a8e-9d3e-0c9a1b2c3d4e")

# The accepted forms each error message must show.
VSOCK_FORM = "vsock://<cid>:<port>"
HVSOCK_FORM = "hvsock://<vm>/<service>"
HYBRID_FORM = "hybrid://<uds_path>:<port>"
TCP_FORM = "tcp://<host>:<port>"
UNIX_FORM = "unix://<path>"
GUID_FORM = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
ALL_FORMS = (VSOCK_FORM, HVSOCK_FORM, HYBRID_FORM, TCP_FORM, UNIX_FORM)


# --------------------------------------------------------------------------------------
# One table, driven both ways: (text as a user may write it, the object, canonical text)
# --------------------------------------------------------------------------------------
CASES = [
    # vsock: every well-known CID, by name and by number
    ("vsock://hypervisor:5000", VsockAddress(CID_HYPERVISOR, 5000), "vsock://0:5000"),
    ("vsock://0:5000", VsockAddress(0, 5000), "vsock://0:5000"),
    ("vsock://local:1234", VsockAddress(CID_LOCAL, 1234), "vsock://1:1234"),
    ("vsock://host:2761", VsockAddress(CID_HOST, 2761), "vsock://2:2761"),
    ("vsock://2:2761", VsockAddress(2, 2761), "vsock://2:2761"),
    ("vsock://any:5000", VsockAddress(CID_ANY, 5000), "vsock://any:5000"),
    ("vsock://4294967295:5000", VsockAddress(CID_ANY, 5000), "vsock://any:5000"),
    ("vsock://0xFFFFFFFF:5000", VsockAddress(CID_ANY, 5000), "vsock://any:5000"),
    ("vsock://3:5000", VsockAddress(3, 5000), "vsock://3:5000"),
    ("VSOCK://HOST:ANY", VsockAddress(CID_HOST, PORT_ANY), "vsock://2:any"),
    # vsock: port any and the edge ports
    ("vsock://3:any", VsockAddress(3, PORT_ANY), "vsock://3:any"),
    ("vsock://3:0", VsockAddress(3, 0), "vsock://3:0"),
    ("vsock://3:0x7FFFFFFF", VsockAddress(3, 0x7FFFFFFF), "vsock://3:2147483647"),
    ("vsock://3:2147483647", VsockAddress(3, 0x7FFFFFFF), "vsock://3:2147483647"),
    ("vsock://3:4294967295", VsockAddress(3, PORT_ANY), "vsock://3:any"),
    ("vsock://3:0xffffffff", VsockAddress(3, PORT_ANY), "vsock://3:any"),
    ("vsock://any:any", VsockAddress(CID_ANY, PORT_ANY), "vsock://any:any"),
    ("vsock://007:0010", VsockAddress(7, 10), "vsock://7:10"),
    ("vsock://0:" + "0" * 5000 + "5", VsockAddress(0, 5), "vsock://0:5"),
    ("vsock://0x00000003:0x" + "0" * 5000 + "f", VsockAddress(3, 15), "vsock://3:15"),
    # hvsock: every well-known VM id, by name and by GUID
    ("hvsock://wildcard/5000", HyperVAddress.for_port(WILDCARD, 5000), "hvsock://wildcard/5000"),
    ("hvsock://zero/5000", HyperVAddress.for_port(WILDCARD, 5000), "hvsock://wildcard/5000"),
    (
        "hvsock://00000000-0000-0000-0000-000000000000/5000",
        HyperVAddress.for_port(WILDCARD, 5000),
        "hvsock://wildcard/5000",
    ),
    ("hvsock://broadcast/5000", HyperVAddress.for_port(BROADCAST, 5000), "hvsock://broadcast/5000"),
    (
        "hvsock://FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF/5000",
        HyperVAddress.for_port(BROADCAST, 5000),
        "hvsock://broadcast/5000",
    ),
    ("hvsock://children/5000", HyperVAddress.for_port(CHILDREN, 5000), "hvsock://children/5000"),
    (
        "hvsock://{90DB8B89-0D35-4F79-8CE9-49EA0AC8B7CD}/5000",
        HyperVAddress.for_port(CHILDREN, 5000),
        "hvsock://children/5000",
    ),
    ("hvsock://loopback/5000", HyperVAddress.for_port(LOOPBACK, 5000), "hvsock://loopback/5000"),
    (
        "hvsock://e0e16197-dd56-4a10-9195-5ee7a155a838/5000",
        HyperVAddress.for_port(LOOPBACK, 5000),
        "hvsock://loopback/5000",
    ),
    ("hvsock://parent/5000", HyperVAddress.for_port(PARENT, 5000), "hvsock://parent/5000"),
    (
        "hvsock://{a42e7cda-d03f-480c-9cc2-a4de20abb878}/5000",
        HyperVAddress.for_port(PARENT, 5000),
        "hvsock://parent/5000",
    ),
    ("hvsock://silohost/5000", HyperVAddress.for_port(SILOHOST, 5000), "hvsock://silohost/5000"),
    (
        "hvsock://36BD0C5C-7276-4223-88BA-7D03B654C568/5000",
        HyperVAddress.for_port(SILOHOST, 5000),
        "hvsock://silohost/5000",
    ),
    ("HVSOCK://PARENT/5000", HyperVAddress.for_port(PARENT, 5000), "hvsock://parent/5000"),
    # hvsock: the seed's port 2761 <-> 00000ac9-facb-11e6-bd58-64006a7986d3, in every spelling
    ("hvsock://parent/2761", HyperVAddress(PARENT, SEED_SID), "hvsock://parent/2761"),
    ("hvsock://parent/0xac9", HyperVAddress(PARENT, SEED_SID), "hvsock://parent/2761"),
    (f"hvsock://parent/{SEED_SID_TEXT}", HyperVAddress(PARENT, SEED_SID), "hvsock://parent/2761"),
    (
        f"hvsock://parent/{SEED_SID_TEXT.upper()}",
        HyperVAddress(PARENT, SEED_SID),
        "hvsock://parent/2761",
    ),
    (
        f"hvsock://parent/{{{SEED_SID_TEXT}}}",
        HyperVAddress(PARENT, SEED_SID),
        "hvsock://parent/2761",
    ),
    (
        f"hvsock://parent/{{{SEED_SID_TEXT.upper()}}}",
        HyperVAddress(PARENT, SEED_SID),
        "hvsock://parent/2761",
    ),
    # hvsock: edge ports
    ("hvsock://parent/0", HyperVAddress.for_port(PARENT, 0), "hvsock://parent/0"),
    (
        "hvsock://parent/0x7FFFFFFF",
        HyperVAddress.for_port(PARENT, 0x7FFFFFFF),
        "hvsock://parent/2147483647",
    ),
    (
        "hvsock://parent/0xFFFFFFFF",
        HyperVAddress.for_port(PARENT, U32),
        "hvsock://parent/4294967295",
    ),
    # hvsock: a real VM id and a non-template service id, in upper/lower case, with/without {}
    (
        f"hvsock://{VM}/{SESSION_SID}",
        HyperVAddress(VM, SESSION_SID),
        f"hvsock://{VM}/{SESSION_SID}",
    ),
    (
        f"hvsock://{{{str(VM).upper()}}}/{{{str(SESSION_SID).upper()}}}",
        HyperVAddress(VM, SESSION_SID),
        f"hvsock://{VM}/{SESSION_SID}",
    ),
    (f"hvsock://{str(VM).upper()}/2761", HyperVAddress(VM, SEED_SID), f"hvsock://{VM}/2761"),
    # hybrid: the path runs to the last ':'
    (
        "hybrid:///run/fc/v.sock:52",
        HybridAddress("/run/fc/v.sock", 52),
        "hybrid:///run/fc/v.sock:52",
    ),
    (
        "hybrid:///tmp/a:b/v.sock:1024",
        HybridAddress("/tmp/a:b/v.sock", 1024),
        "hybrid:///tmp/a:b/v.sock:1024",
    ),
    (
        "hybrid://relative.sock:0x10",
        HybridAddress("relative.sock", 16),
        "hybrid://relative.sock:16",
    ),
    ("hybrid:///v.sock:0", HybridAddress("/v.sock", 0), "hybrid:///v.sock:0"),
    (
        "hybrid:///v.sock:0x7FFFFFFF",
        HybridAddress("/v.sock", 0x7FFFFFFF),
        "hybrid:///v.sock:2147483647",
    ),
    ("hybrid:///v.sock:4294967295", HybridAddress("/v.sock", U32), "hybrid:///v.sock:4294967295"),
    # tcp: IPv4, names, [IPv6]
    ("tcp://127.0.0.1:2222", TcpAddress("127.0.0.1", 2222), "tcp://127.0.0.1:2222"),
    ("tcp://localhost:80", TcpAddress("localhost", 80), "tcp://localhost:80"),
    ("tcp://vm-1.example.com:0", TcpAddress("vm-1.example.com", 0), "tcp://vm-1.example.com:0"),
    ("TCP://Example.COM:65535", TcpAddress("Example.COM", 65535), "tcp://Example.COM:65535"),
    ("tcp://[::1]:2222", TcpAddress("::1", 2222), "tcp://[::1]:2222"),
    ("tcp://[fe80::1%eth0]:0x16", TcpAddress("fe80::1%eth0", 22), "tcp://[fe80::1%eth0]:22"),
    # unix: paths and the abstract namespace
    ("unix:///run/agent.sock", UnixAddress("/run/agent.sock"), "unix:///run/agent.sock"),
    (
        "unix://relative/agent.sock",
        UnixAddress("relative/agent.sock"),
        "unix://relative/agent.sock",
    ),
    ("unix:///tmp/odd:name", UnixAddress("/tmp/odd:name"), "unix:///tmp/odd:name"),
    ("unix://@abstract-name", UnixAddress("@abstract-name"), "unix://@abstract-name"),
    ("UNIX://@x", UnixAddress("@x"), "unix://@x"),
]
CASE_IDS = [t if len(t) < 80 else f"{t[:40]}...({len(t)} chars)" for t, _, _ in CASES]


@pytest.mark.parametrize(("text", "expected", "canonical"), CASES, ids=CASE_IDS)
def test_parse_text_gives_the_object(text: str, expected: object, canonical: str) -> None:
    parsed = parse_address(text)
    assert type(parsed) is type(expected)
    assert parsed == expected
    assert hash(parsed) == hash(expected)


@pytest.mark.parametrize(("text", "expected", "canonical"), CASES, ids=CASE_IDS)
def test_format_object_gives_canonical_text_that_parses_back(
    text: str, expected: object, canonical: str
) -> None:
    assert str(expected) == canonical
    assert parse_address(canonical) == expected
    assert str(parse_address(canonical)) == canonical


def test_table_covers_every_well_known_id_cid_and_edge_port() -> None:
    objects = [expected for _, expected, _ in CASES]
    vm_ids = {a.vm_id for a in objects if isinstance(a, HyperVAddress)}
    assert {WILDCARD, BROADCAST, CHILDREN, LOOPBACK, PARENT, SILOHOST} <= vm_ids
    cids = {a.cid for a in objects if isinstance(a, VsockAddress)}
    assert {CID_HYPERVISOR, CID_LOCAL, CID_HOST, CID_ANY} <= cids
    ports = {a.port for a in objects if isinstance(a, (VsockAddress, HyperVAddress, HybridAddress))}
    assert {0, 0x7FFFFFFF, U32, SEED_PORT} <= ports
    assert {type(a) for a in objects} == {
        VsockAddress,
        HyperVAddress,
        HybridAddress,
        TcpAddress,
        UnixAddress,
    }


def test_parse_address_returns_an_address_object_unchanged() -> None:
    for _, expected, _ in CASES:
        assert parse_address(expected) is expected  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Fields, properties and value semantics
# --------------------------------------------------------------------------------------
def test_sockaddr_forms() -> None:
    assert VsockAddress(3, 5000).sockaddr == (3, 5000)
    assert HyperVAddress(PARENT, SEED_SID).sockaddr == (
        "A42E7CDA-D03F-480C-9CC2-A4DE20ABB878",
        "00000AC9-FACB-11E6-BD58-64006A7986D3",
    )
    assert TcpAddress("::1", 22).sockaddr == ("::1", 22)
    assert UnixAddress("/run/a.sock").sockaddr == "/run/a.sock"
    assert UnixAddress("@name").sockaddr == b"\0name"


def test_hyperv_port_and_vm_name() -> None:
    assert HyperVAddress(PARENT, SEED_SID).port == SEED_PORT
    assert HyperVAddress(PARENT, SEED_SID).vm_name == "parent"
    assert HyperVAddress(VM, SESSION_SID).port is None
    assert HyperVAddress(VM, SESSION_SID).vm_name is None
    # "zero" is an alias: WILDCARD keeps its canonical name
    assert HyperVAddress(WILDCARD, SEED_SID).vm_name == "wildcard"


def test_hybrid_listen_path_and_unix_abstract() -> None:
    assert HybridAddress("/run/fc/v.sock", 52).listen_path == "/run/fc/v.sock_52"
    assert UnixAddress("@name").abstract is True
    assert UnixAddress("/run/name").abstract is False


def test_addresses_are_frozen_and_hashable() -> None:
    a = VsockAddress(3, 5000)
    with pytest.raises(AttributeError, match="immutable"):
        a.port = 1  # type: ignore[misc]
    assert len({a, VsockAddress(3, 5000), parse_address("vsock://3:5000")}) == 1
    # equal fields of different kinds are different addresses
    assert HybridAddress("/x", 5) != UnixAddress("/x")
    assert VsockAddress(2, 5) != TcpAddress("2", 5)
    assert VsockAddress(2, 5) != (2, 5)
    with pytest.raises(AttributeError, match="immutable"):
        del a.cid  # type: ignore[misc]


@pytest.mark.parametrize(("text", "expected", "canonical"), CASES, ids=CASE_IDS)
def test_addresses_copy_pickle_repr_and_match_like_values(
    text: str, expected: object, canonical: str
) -> None:
    # The address types are plain classes (start-up: no dataclasses); they must still
    # behave as the frozen dataclasses they replaced.
    import copy
    import pickle

    assert pickle.loads(pickle.dumps(expected)) == expected
    assert copy.deepcopy(expected) == expected
    namespace = {type(expected).__name__: type(expected), "UUID": uuid.UUID}
    assert eval(repr(expected), namespace) == expected  # our own repr, nothing foreign
    fields = type(expected).__match_args__  # type: ignore[attr-defined]
    match expected:
        case VsockAddress(cid, port) | HybridAddress(cid, port) | TcpAddress(cid, port):
            assert (cid, port) == tuple(getattr(expected, f) for f in fields)
        case HyperVAddress(vm, service):
            assert (vm, service) == (expected.vm_id, expected.service_id)
        case UnixAddress(path):
            assert path == expected.path
        case _:
            pytest.fail(f"no case matched {expected!r}")


# --------------------------------------------------------------------------------------
# The VSOCK template, through the address model
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("port", [0, 1, SEED_PORT, 0x7FFFFFFF, 0x80000000, U32])
def test_hyperv_for_port_uses_the_template(port: int) -> None:
    address = HyperVAddress.for_port(PARENT, port)
    assert address.service_id == service_id_for_port(port)
    assert str(address.service_id).endswith("-facb-11e6-bd58-64006a7986d3")
    assert address.service_id.int >> 96 == port
    assert address.port == port


def test_hyperv_for_port_out_of_range() -> None:
    with pytest.raises(AddressError, match=r"port 4294967296 is out of range"):
        HyperVAddress.for_port(PARENT, U32 + 1)


# --------------------------------------------------------------------------------------
# Conversions between vsock and Hyper-V terms
# --------------------------------------------------------------------------------------
PAIRS = [
    (VsockAddress(CID_HOST, 5000), HyperVAddress.for_port(PARENT, 5000)),
    (VsockAddress(CID_ANY, 5000), HyperVAddress.for_port(WILDCARD, 5000)),
    (VsockAddress(CID_LOCAL, 5000), HyperVAddress.for_port(LOOPBACK, 5000)),
    (VsockAddress(CID_HOST, SEED_PORT), HyperVAddress(PARENT, SEED_SID)),
    (VsockAddress(CID_ANY, PORT_ANY), HyperVAddress.for_port(WILDCARD, U32)),
    (VsockAddress(CID_LOCAL, 0), HyperVAddress.for_port(LOOPBACK, 0)),
]


@pytest.mark.parametrize(("vsock", "hyperv"), PAIRS, ids=[str(v) for v, _ in PAIRS])
def test_to_hyperv_and_to_vsock_are_inverse(vsock: VsockAddress, hyperv: HyperVAddress) -> None:
    assert vsock.to_hyperv() == hyperv
    assert hyperv.to_vsock() == vsock


@pytest.mark.parametrize("cid", [CID_HYPERVISOR, 3, 4, 0x7FFFFFFF, CID_ANY - 1])
def test_to_hyperv_refuses_cids_without_a_vm_id(cid: int) -> None:
    with pytest.raises(AddressError, match=rf"CID {cid} has no Hyper-V VM id") as info:
        VsockAddress(cid, 5000).to_hyperv()
    assert "host_view" in str(info.value)


@pytest.mark.parametrize("vm", [BROADCAST, CHILDREN, SILOHOST, VM], ids=str)
def test_to_vsock_refuses_vm_ids_without_a_cid(vm: uuid.UUID) -> None:
    with pytest.raises(AddressError, match=rf"VM id {vm} has no vsock CID"):
        HyperVAddress.for_port(vm, 5000).to_vsock()


def test_to_vsock_refuses_a_non_template_service_id() -> None:
    with pytest.raises(AddressError, match="not of the VSOCK template form") as info:
        HyperVAddress(PARENT, SESSION_SID).to_vsock()
    assert str(SESSION_SID) in str(info.value)
    assert "00000000-facb-11e6-bd58-64006a7986d3" in str(info.value)


@pytest.mark.parametrize("cid", [CID_HOST, CID_ANY])
def test_host_view(cid: int) -> None:
    # A guest's connect target (host) and its listen address (any) are both the
    # same host-side address: this VM's id and the port's template service id.
    assert host_view(VsockAddress(cid, SEED_PORT), VM) == HyperVAddress(VM, SEED_SID)
    assert str(host_view(VsockAddress(cid, SEED_PORT), VM)) == f"hvsock://{VM}/2761"


@pytest.mark.parametrize("cid", [CID_HYPERVISOR, CID_LOCAL, 3])
def test_host_view_refuses_cids_a_guest_cannot_use(cid: int) -> None:
    with pytest.raises(AddressError, match=rf"reaches only the host \(CID 2\).*CID {cid}\Z"):
        host_view(VsockAddress(cid, 5000), VM)


def test_host_view_takes_a_uuid_or_guid_text() -> None:
    assert host_view(VsockAddress(CID_HOST, 5000), str(VM).upper()) == host_view(
        VsockAddress(CID_HOST, 5000), VM
    )
    with pytest.raises(AddressError, match=r"vm_id must be a GUID string or a uuid\.UUID"):
        host_view(VsockAddress(CID_HOST, 5000), 5)  # type: ignore[arg-type]


def test_guest_view() -> None:
    host = HyperVAddress(VM, SEED_SID)
    assert guest_view(host) == VsockAddress(CID_HOST, SEED_PORT)
    assert guest_view(host, guest_listens=True) == VsockAddress(CID_ANY, SEED_PORT)
    assert str(guest_view(host)) == "vsock://2:2761"


def test_guest_view_refuses_a_non_template_service_id() -> None:
    with pytest.raises(AddressError, match="00000000-facb-11e6-bd58-64006a7986d3"):
        guest_view(HyperVAddress(VM, SESSION_SID))


# --------------------------------------------------------------------------------------
# describe_address
# --------------------------------------------------------------------------------------
DESCRIPTIONS = [
    (
        VsockAddress(CID_HOST, SEED_PORT),
        {
            "address": "vsock://2:2761",
            "kind": "vsock",
            "cid": 2,
            "cid_name": "host",
            "port": 2761,
            "port_any": False,
            "privileged_port": False,
            "hyperv_listen_ok": True,
            "service_id": SEED_SID_TEXT,
            "hyperv_view": "hvsock://parent/2761",
        },
    ),
    (
        VsockAddress(3, 80),
        {
            "address": "vsock://3:80",
            "kind": "vsock",
            "cid": 3,
            "cid_name": None,
            "port": 80,
            "port_any": False,
            "privileged_port": True,
            "hyperv_listen_ok": True,
            "service_id": "00000050-facb-11e6-bd58-64006a7986d3",
            "hyperv_view": None,
        },
    ),
    (
        VsockAddress(CID_ANY, PORT_ANY),
        {
            "address": "vsock://any:any",
            "kind": "vsock",
            "cid": CID_ANY,
            "cid_name": "any",
            "port": PORT_ANY,
            "port_any": True,
            "privileged_port": False,
            "hyperv_listen_ok": True,
            "service_id": "ffffffff-facb-11e6-bd58-64006a7986d3",
            "hyperv_view": "hvsock://wildcard/4294967295",
        },
    ),
    (
        VsockAddress(CID_LOCAL, 0x80000000),
        {
            "address": "vsock://1:2147483648",
            "kind": "vsock",
            "cid": 1,
            "cid_name": "local",
            "port": 0x80000000,
            "port_any": False,
            "privileged_port": False,
            "hyperv_listen_ok": False,
            "service_id": "80000000-facb-11e6-bd58-64006a7986d3",
            "hyperv_view": "hvsock://loopback/2147483648",
        },
    ),
    (
        HyperVAddress(PARENT, SEED_SID),
        {
            "address": "hvsock://parent/2761",
            "kind": "hvsock",
            "vm_id": "a42e7cda-d03f-480c-9cc2-a4de20abb878",
            "vm_name": "parent",
            "service_id": SEED_SID_TEXT,
            "template": True,
            "port": 2761,
            "linux_guest_connects_to": "vsock://2:2761",
            "vsock_view": "vsock://2:2761",
        },
    ),
    (
        HyperVAddress(VM, SEED_SID),
        {
            "address": f"hvsock://{VM}/2761",
            "kind": "hvsock",
            "vm_id": str(VM),
            "vm_name": None,
            "service_id": SEED_SID_TEXT,
            "template": True,
            "port": 2761,
            "linux_guest_connects_to": "vsock://2:2761",
            "vsock_view": None,
        },
    ),
    (
        HyperVAddress(CHILDREN, SESSION_SID),
        {
            "address": f"hvsock://children/{SESSION_SID}",
            "kind": "hvsock",
            "vm_id": "90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd",
            "vm_name": "children",
            "service_id": "999e53d4-3d5c-4c3e-8779-bed06ec056e1",
            "template": False,
            "port": None,
            "linux_guest_connects_to": None,
            "vsock_view": None,
        },
    ),
    (
        HybridAddress("/run/fc/v.sock", 52),
        {
            "address": "hybrid:///run/fc/v.sock:52",
            "kind": "hybrid",
            "uds_path": "/run/fc/v.sock",
            "port": 52,
            "listen_path": "/run/fc/v.sock_52",
        },
    ),
    (
        TcpAddress("::1", 2222),
        {"address": "tcp://[::1]:2222", "kind": "tcp", "host": "::1", "port": 2222},
    ),
    (
        UnixAddress("/run/agent.sock"),
        {
            "address": "unix:///run/agent.sock",
            "kind": "unix",
            "path": "/run/agent.sock",
            "abstract": False,
        },
    ),
    (
        UnixAddress("@agent"),
        {"address": "unix://@agent", "kind": "unix", "path": "@agent", "abstract": True},
    ),
]


@pytest.mark.parametrize(
    ("address", "expected"), DESCRIPTIONS, ids=[str(a) for a, _ in DESCRIPTIONS]
)
def test_describe_address(address: object, expected: dict[str, object]) -> None:
    assert describe_address(address) == expected  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------
# Bad input: the message names the bad part and shows an accepted form
# --------------------------------------------------------------------------------------
BAD_TEXT = [
    # missing / unknown scheme
    ("/run/agent.sock", ["'/run/agent.sock' has no scheme", *ALL_FORMS]),
    ("", ["'' has no scheme", VSOCK_FORM]),
    ("vsock:/3:5000", ["has no scheme", VSOCK_FORM]),
    ("udp://1.2.3.4:5", ["unknown address scheme 'udp'", *ALL_FORMS]),
    ("://3:5000", ["unknown address scheme ''", VSOCK_FORM]),
    # vsock: out-of-range and malformed parts
    ("vsock://3:4294967296", ["port 4294967296 is out of range", VSOCK_FORM]),
    ("vsock://3:0x100000000", ["port 4294967296 is out of range", VSOCK_FORM]),
    ("vsock://4294967296:5000", ["CID 4294967296 is out of range", VSOCK_FORM]),
    ("vsock://3:" + "9" * 5000, ["port '99999", "out of range", VSOCK_FORM]),
    ("vsock://3:0x" + "f" * 4000, ["port '0xfff", "out of range", VSOCK_FORM]),
    ("vsock://" + "1" * 30 + ":5", ["CID ", "1" * 20, "out of range", VSOCK_FORM]),
    ("vsock://3:" + "0" * 5000 + "1" * 11, ["port ", "out of range", VSOCK_FORM]),
    ("vsock://3:-1", ["port '-1' is out of range: it cannot be negative", VSOCK_FORM]),
    ("vsock://3:50x", ["port '50x' is not a number", VSOCK_FORM]),
    ("vsock://3:0x", ["port '0x' is not a number", VSOCK_FORM]),
    ("vsock://3: 5", ["port ' 5' is not a number", VSOCK_FORM]),
    ("vsock://-1:5000", ["unknown CID '-1'", "hypervisor, local, host, any", VSOCK_FORM]),
    ("vsock://guest:5000", ["unknown CID 'guest'", "hypervisor, local, host, any", VSOCK_FORM]),
    ("vsock://3:", ["port is missing", VSOCK_FORM]),
    ("vsock://:5000", ["CID is missing", VSOCK_FORM]),
    ("vsock://3", ["'3' has no ':<port>'", VSOCK_FORM]),
    ("vsock://", ["'' has no ':<port>'", VSOCK_FORM]),
    ("vsock://3:5000:1", ["port '5000:1' is not a number", VSOCK_FORM]),
    # hvsock
    ("hvsock://parent/4294967296", ["port 4294967296 is out of range", HVSOCK_FORM]),
    ("hvsock://parent/" + "9" * 5000, ["port '9999", "out of range", HVSOCK_FORM]),
    ("hvsock://parent", ["'parent' has no '/<service>'", HVSOCK_FORM]),
    ("hvsock:///5000", ["VM id is empty", HVSOCK_FORM]),
    ("hvsock://parent/", ["service id is empty", HVSOCK_FORM]),
    (
        "hvsock://mother/5000",
        [
            "unknown VM name 'mother'",
            "wildcard, zero, broadcast, children, loopback, parent, silohost",
            HVSOCK_FORM,
        ],
    ),
    (
        "hvsock://a42e7cda-d03f-480c-9cc2-a4de20abb87/5000",
        ["VM id 'a42e7cda-d03f-480c-9cc2-a4de20abb87' is not a GUID", GUID_FORM],
    ),
    (
        "hvsock://a42e7cda-d03f-480c-9cc2-a4de20abb87g/5000",
        ["VM id 'a42e7cda-d03f-480c-9cc2-a4de20abb87g' is not a GUID", GUID_FORM],
    ),
    (
        "hvsock://{a42e7cda-d03f-480c-9cc2-a4de20abb878/5000",
        ["VM id '{a42e7cda-d03f-480c-9cc2-a4de20abb878' is not a GUID", GUID_FORM],
    ),
    (
        "hvsock://parent/00000ac9-facb-11e6-bd58-64006a7986dg",
        ["service id '00000ac9-facb-11e6-bd58-64006a7986dg' is not a GUID", GUID_FORM],
    ),
    (
        "hvsock://parent/00000ac9facb11e6bd5864006a7986d3",
        ["service id '00000ac9facb11e6bd5864006a7986d3' is not a GUID", GUID_FORM],
    ),
    (
        "hvsock://parent/urn:uuid:00000ac9-facb-11e6-bd58-64006a7986d3",
        ["service id 'urn:uuid:00000ac9-facb-11e6-bd58-64006a7986d3' is not a GUID", GUID_FORM],
    ),
    ("hvsock://parent/-5", ["service id '-5' is not a GUID", GUID_FORM]),
    ("hvsock://parent/5000/x", ["service id '5000/x' is not a GUID", GUID_FORM]),
    # hybrid
    ("hybrid://:52", ["uds path is empty", HYBRID_FORM]),
    ("hybrid:///run/v.sock", ["'/run/v.sock' has no ':<port>'", HYBRID_FORM]),
    ("hybrid:///run/v.sock:", ["port is missing", HYBRID_FORM]),
    ("hybrid:///run/v.sock:4294967296", ["port 4294967296 is out of range", HYBRID_FORM]),
    ("hybrid:///run/v.sock:any", ["port 'any' is not a number", HYBRID_FORM]),
    ("hybrid:///run/v\0.sock:52", [r"'/run/v\x00.sock' contains a NUL character", HYBRID_FORM]),
    (
        "hybrid:///" + "a" * 104 + ":52",
        ["is too long for a Unix socket", "108 bytes", "at most 107"],
    ),
    ("hybrid:///run/\udcff:52", [r"'/run/\udcff' is not valid text", HYBRID_FORM]),
    # tcp
    ("tcp://127.0.0.1:65536", ["TCP port 65536 is out of range 0..65535", TCP_FORM]),
    ("tcp://127.0.0.1:http", ["TCP port 'http' is not a number", TCP_FORM]),
    ("tcp://127.0.0.1", ["'127.0.0.1' has no ':<port>'", TCP_FORM]),
    ("tcp://127.0.0.1:", ["TCP port is missing", TCP_FORM]),
    ("tcp://:80", ["TCP host is empty", TCP_FORM]),
    ("tcp://[]:80", ["TCP host [] is not an IPv6 address", TCP_FORM]),
    ("tcp://::1:80", ["TCP host '::1': put IPv6 addresses in brackets", TCP_FORM]),
    ("tcp://[::1]", ["'[::1]': write IPv6 as [addr]:port", TCP_FORM]),
    ("tcp://[::1:80", ["'[::1:80': write IPv6 as [addr]:port", TCP_FORM]),
    ("tcp://[127.0.0.1]:80", ["TCP host [127.0.0.1] is not an IPv6 address", TCP_FORM]),
    ("tcp://a b:80", ["TCP host 'a b' has characters a host cannot have", TCP_FORM]),
    ("tcp://user@host:80", ["TCP host 'user@host' has characters", TCP_FORM]),
    # unix
    ("unix://", ["Unix socket path is empty", UNIX_FORM]),
    ("unix://@", ["abstract Unix socket name is empty", UNIX_FORM]),
    ("unix:///tmp/a\0b", [r"'/tmp/a\x00b' contains a NUL character", UNIX_FORM]),
    ("unix:///" + "a" * 107, ["is too long for a Unix socket", "108 bytes", "at most 107"]),
    ("unix://@" + "é" * 60, ["is too long for a Unix socket", "121 bytes", "at most 107"]),
]


@pytest.mark.parametrize(("text", "fragments"), BAD_TEXT, ids=[repr(t[:40]) for t, _ in BAD_TEXT])
def test_bad_text_names_the_bad_part(text: str, fragments: list[str]) -> None:
    with pytest.raises(AddressError) as info:
        parse_address(text)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    assert len(message) < 1000  # a huge bad input is not echoed whole


def test_longest_unix_paths_that_fit() -> None:
    # sun_path is 108 bytes with its NUL; a hybrid path also needs room for "_<port>"
    assert parse_address("unix:///" + "a" * 106) == UnixAddress("/" + "a" * 106)
    assert HybridAddress("/" + "a" * 103, 52).listen_path.endswith("a_52")
    with pytest.raises(AddressError, match="108 bytes"):
        HybridAddress("/" + "a" * 104, 52)


BAD_FIELDS = [
    (lambda: VsockAddress(True, 5000), ["CID must be an integer, not bool", VSOCK_FORM]),
    (lambda: VsockAddress(3, 5000.0), ["port must be an integer, not float", VSOCK_FORM]),
    (lambda: VsockAddress(None, 5000), ["CID must be an integer, not NoneType", VSOCK_FORM]),
    (lambda: VsockAddress(3, "5000"), ["port must be an integer, not str", VSOCK_FORM]),
    (lambda: VsockAddress(-1, 5000), ["CID -1 is out of range 0..4294967295", VSOCK_FORM]),
    (lambda: VsockAddress(3, U32 + 1), ["port 4294967296 is out of range", VSOCK_FORM]),
    (lambda: VsockAddress(10**5000, 1), ["CID (16610-bit number) is out of range", VSOCK_FORM]),
    (lambda: HyperVAddress("parent", SEED_SID), ["vm_id 'parent' is not a GUID"]),
    (
        lambda: HyperVAddress(PARENT, None),
        ["service_id must be a uuid.UUID or a GUID string, not NoneType", HVSOCK_FORM],
    ),
    (
        lambda: HyperVAddress(PARENT, 5000),
        ["service_id must be a uuid.UUID or a GUID string, not int", HVSOCK_FORM],
    ),
    (lambda: HybridAddress("/v.sock", False), ["port must be an integer, not bool", HYBRID_FORM]),
    (lambda: HybridAddress("/v.sock", 52.0), ["port must be an integer, not float", HYBRID_FORM]),
    (lambda: HybridAddress(None, 52), ["uds path must be a string, not NoneType", HYBRID_FORM]),
    (lambda: HybridAddress("", 52), ["uds path is empty", HYBRID_FORM]),
    (lambda: HybridAddress("/v\0", 52), ["NUL character", HYBRID_FORM]),
    (lambda: TcpAddress("localhost", True), ["TCP port must be an integer, not bool", TCP_FORM]),
    (lambda: TcpAddress("localhost", 22.0), ["TCP port must be an integer, not float", TCP_FORM]),
    (lambda: TcpAddress("localhost", -1), ["TCP port -1 is out of range 0..65535", TCP_FORM]),
    (lambda: TcpAddress(None, 22), ["TCP host must be a string, not NoneType", TCP_FORM]),
    (lambda: TcpAddress(b"localhost", 22), ["TCP host must be a string, not bytes", TCP_FORM]),
    (lambda: TcpAddress("", 22), ["TCP host is empty", TCP_FORM]),
    (lambda: TcpAddress("[::1]", 22), ["TCP host '[::1]' has characters", TCP_FORM]),
    (lambda: UnixAddress(None), ["Unix socket path must be a string, not NoneType", UNIX_FORM]),
    (
        lambda: UnixAddress(b"/run/a.sock"),
        ["Unix socket path must be a string, not bytes", UNIX_FORM],
    ),
    (lambda: UnixAddress(""), ["Unix socket path is empty", UNIX_FORM]),
    (lambda: UnixAddress("@"), ["abstract Unix socket name is empty", UNIX_FORM]),
    (lambda: parse_address(None), ["an address must be text or an address object", "not NoneType"]),
    (lambda: parse_address(b"vsock://3:5000"), ["not bytes"]),
    (lambda: parse_address(5000), ["not int"]),
]


@pytest.mark.parametrize(
    ("make", "fragments"), BAD_FIELDS, ids=[str(i) for i in range(len(BAD_FIELDS))]
)
def test_bad_fields_name_the_bad_part(make: object, fragments: list[str]) -> None:
    with pytest.raises(AddressError) as info:
        make()  # type: ignore[operator]
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message
    # AddressError is also a ValueError, so generic validation handlers catch it
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------
u32 = st.integers(0, U32)
vm_ids = st.one_of(
    st.uuids(), st.sampled_from([WILDCARD, BROADCAST, CHILDREN, LOOPBACK, PARENT, SILOHOST])
)
service_ids = st.one_of(st.uuids(), u32.map(service_id_for_port))
# At most 4 UTF-8 bytes a character: 24 characters + "_4294967295" always fit in 107 bytes.
path_text = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=24)
hostnames = st.from_regex(
    r"[A-Za-z0-9]([A-Za-z0-9-]{0,20}[A-Za-z0-9])?(\.[A-Za-z0-9-]{1,10}){0,3}", fullmatch=True
)
hosts = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str), hostnames)

vsock_addresses = st.builds(VsockAddress, cid=u32, port=u32)
hyperv_addresses = st.builds(HyperVAddress, vm_id=vm_ids, service_id=service_ids)
# A relative path starting with name: would name a VM (HybridAddress refuses it).
hybrid_addresses = st.builds(
    HybridAddress, port=u32, uds_path=path_text.filter(lambda p: p[:5].lower() != "name:")
)
tcp_addresses = st.builds(TcpAddress, host=hosts, port=st.integers(0, 0xFFFF))
unix_addresses = st.builds(UnixAddress, path=path_text.filter(lambda p: p != "@"))
addresses = st.one_of(
    vsock_addresses, hyperv_addresses, hybrid_addresses, tcp_addresses, unix_addresses
)


@settings(max_examples=500, deadline=None)
@given(addresses)
def test_round_trip(address: object) -> None:
    text = str(address)
    assert parse_address(text) == address
    assert str(parse_address(text)) == text
    # the scheme is read in any case
    scheme, rest = text.split("://", 1)
    assert parse_address(f"{scheme.upper()}://{rest}") == address
    info = describe_address(address)  # type: ignore[arg-type]
    assert info["address"] == text
    assert info["kind"] == scheme


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from([HybridAddress, TcpAddress, UnixAddress]),
    st.text(min_size=1),
    st.integers(0, 0xFFFF),
)
def test_any_accepted_text_field_round_trips(kind: type, text: str, port: int) -> None:
    try:
        address = kind(text) if kind is UnixAddress else kind(text, port)
    except AddressError as exc:
        message = str(exc)
    else:
        assert parse_address(str(address)) == address
        return
    assert message  # refused cleanly, with something to say


@settings(max_examples=300, deadline=None)
@given(vm_ids, u32)
def test_host_view_inverts_guest_view(vm: uuid.UUID, port: int) -> None:
    host = HyperVAddress.for_port(vm, port)
    assert host_view(guest_view(host), vm) == host
    assert host_view(guest_view(host, guest_listens=True), vm) == host


def parses_or_refuses(text: object) -> None:
    """The property: either a valid address whose text parses back, or AddressError."""
    try:
        address = parse_address(text)  # type: ignore[arg-type]
    except AddressError as exc:
        message = str(exc)
    else:
        assert parse_address(str(address)) == address
        return
    assert message  # refused, with something to say


SCHEMES = ["vsock", "hvsock", "hybrid", "tcp", "unix", "VSOCK", "HvSock", "udp", ""]
# Pieces that reach deep into the parsers when strung together.
TOKENS = [
    "vsock://",
    "hvsock://",
    "hybrid://",
    "tcp://",
    "unix://",
    ":",
    "/",
    "[",
    "]",
    "{",
    "}",
    "@",
    "-",
    "0",
    "9",
    "0x",
    "ff",
    "any",
    "host",
    "local",
    "parent",
    "zero",
    "4294967295",
    "4294967296",
    "65536",
    SEED_SID_TEXT,
    "00000000",
    "facb",
    " ",
    "\0",
    "é",
    "\udcff",
]


@st.composite
def mutated_address_text(draw: st.DrawFn) -> str:
    text = str(draw(addresses))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 4)))
        insert = draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=3)))
        text = text[:i] + insert + text[j:]
    return text


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_arbitrary_text_parses_or_raises_address_error(text: str) -> None:
    parses_or_refuses(text)


@settings(max_examples=500, deadline=None)
@given(
    st.sampled_from(SCHEMES), st.one_of(st.text(), st.lists(st.sampled_from(TOKENS)).map("".join))
)
def test_scheme_and_random_rest_parses_or_raises_address_error(scheme: str, rest: str) -> None:
    parses_or_refuses(f"{scheme}://{rest}")


@settings(max_examples=500, deadline=None)
@given(mutated_address_text())
def test_mutated_valid_text_parses_or_raises_address_error(text: str) -> None:
    parses_or_refuses(text)


@settings(max_examples=100, deadline=None)
@given(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.binary(),
        st.lists(st.integers(), max_size=2),
    )
)
def test_non_text_raises_address_error(value: object) -> None:
    with pytest.raises(AddressError, match="an address must be text or an address object"):
        parse_address(value)  # type: ignore[arg-type]
