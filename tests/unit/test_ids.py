"""Well-known ids, CIDs and ports, the VSOCK template mapping, and GUID parsing."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hvsock
import hvsock.sockets
import hvsock.windows
from hvsock import AddressError
from hvsock._core import ids

U32 = 0xFFFFFFFF
TEMPLATE_TEXT = "00000000-facb-11e6-bd58-64006a7986d3"


# The values come from the reference page (Windows SDK hvsocket.h and linux/vm_sockets.h),
# written out here rather than read back from the code under test.
@pytest.mark.parametrize(
    ("name", "guid"),
    [
        ("wildcard", "00000000-0000-0000-0000-000000000000"),
        ("zero", "00000000-0000-0000-0000-000000000000"),
        ("broadcast", "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"),
        ("children", "90db8b89-0d35-4f79-8ce9-49ea0ac8b7cd"),
        ("loopback", "e0e16197-dd56-4a10-9195-5ee7a155a838"),
        ("parent", "a42e7cda-d03f-480c-9cc2-a4de20abb878"),
        ("silohost", "36bd0c5c-7276-4223-88ba-7d03b654c568"),
    ],
)
def test_well_known_vm_ids(name: str, guid: str) -> None:
    assert ids.WELL_KNOWN_VM_IDS[name] == uuid.UUID(guid)
    assert getattr(ids, name.upper()) == uuid.UUID(guid)


def test_well_known_vm_id_names() -> None:
    assert set(ids.WELL_KNOWN_VM_IDS) == {
        "wildcard",
        "zero",
        "broadcast",
        "children",
        "loopback",
        "parent",
        "silohost",
    }
    # every id has exactly one canonical name; the alias "zero" formats as "wildcard"
    assert ids.VM_ID_NAMES == {
        ids.WILDCARD: "wildcard",
        ids.BROADCAST: "broadcast",
        ids.CHILDREN: "children",
        ids.LOOPBACK: "loopback",
        ids.PARENT: "parent",
        ids.SILOHOST: "silohost",
    }
    assert ids.ZERO is ids.WILDCARD


def test_well_known_cids_and_ports() -> None:
    assert (ids.CID_HYPERVISOR, ids.CID_LOCAL, ids.CID_HOST, ids.CID_ANY) == (0, 1, 2, U32)
    assert ids.PORT_ANY == U32
    assert ids.HV_SOCK_MAX_LISTEN_PORT == 0x7FFFFFFF
    assert ids.PRIVILEGED_PORTS_BELOW == 1024
    assert ids.WELL_KNOWN_CIDS == {"hypervisor": 0, "local": 1, "host": 2, "any": U32}
    assert ids.CID_NAMES == {0: "hypervisor", 1: "local", 2: "host", U32: "any"}


def test_template_constant() -> None:
    assert uuid.UUID(TEMPLATE_TEXT) == ids.VSOCK_TEMPLATE


# --------------------------------------------------------------------------------------
# service_id_for_port / port_for_service_id, both ways
# --------------------------------------------------------------------------------------
TEMPLATE_CASES = [
    (0, "00000000-facb-11e6-bd58-64006a7986d3"),
    (1, "00000001-facb-11e6-bd58-64006a7986d3"),
    (22, "00000016-facb-11e6-bd58-64006a7986d3"),
    (2761, "00000ac9-facb-11e6-bd58-64006a7986d3"),  # the seed's example
    (5000, "00001388-facb-11e6-bd58-64006a7986d3"),
    (0x7FFFFFFF, "7fffffff-facb-11e6-bd58-64006a7986d3"),
    (0x80000000, "80000000-facb-11e6-bd58-64006a7986d3"),
    (U32, "ffffffff-facb-11e6-bd58-64006a7986d3"),
]


@pytest.mark.parametrize(("port", "guid"), TEMPLATE_CASES, ids=[g for _, g in TEMPLATE_CASES])
def test_port_to_service_id(port: int, guid: str) -> None:
    assert ids.service_id_for_port(port) == uuid.UUID(guid)


@pytest.mark.parametrize(("port", "guid"), TEMPLATE_CASES, ids=[g for _, g in TEMPLATE_CASES])
def test_service_id_to_port(port: int, guid: str) -> None:
    assert ids.is_template_service_id(uuid.UUID(guid))
    assert ids.port_for_service_id(uuid.UUID(guid)) == port
    assert ids.port_for_service_id(uuid.UUID(guid.upper())) == port


@pytest.mark.parametrize(
    "guid",
    [
        "999e53d4-3d5c-4c3e-8779-bed06ec056e1",  # VM Session Service (PowerShell Direct)
        "a5201c21-2770-4c11-a68e-f182edb29220",  # VM Session Service-2
        "00000000-0000-0000-0000-000000000000",  # WILDCARD: Data1 zero but not the template
        "a42e7cda-d03f-480c-9cc2-a4de20abb878",  # PARENT
        "00000ac9-facb-11e6-bd58-64006a7986d4",  # one bit off in the tail
        "00000ac9-facc-11e6-bd58-64006a7986d3",  # Data2 off
    ],
)
def test_non_template_service_id_names_the_template(guid: str) -> None:
    sid = uuid.UUID(guid)
    assert not ids.is_template_service_id(sid)
    with pytest.raises(AddressError) as info:
        ids.port_for_service_id(sid)
    message = str(info.value)
    assert guid in message
    assert "VSOCK template" in message
    assert TEMPLATE_TEXT in message
    assert "xxxxxxxx-facb-11e6-bd58-64006a7986d3" in message


@pytest.mark.parametrize(
    ("port", "fragment"),
    [
        (-1, "port -1 is out of range"),
        (U32 + 1, "port 4294967296 is out of range"),
        (True, "port must be an integer, not bool"),
        (5000.0, "port must be an integer, not float"),
        ("5000", "port must be an integer, not str"),
        (None, "port must be an integer, not NoneType"),
    ],
)
def test_service_id_for_bad_port(port: object, fragment: str) -> None:
    with pytest.raises(AddressError) as info:
        ids.service_id_for_port(port)  # type: ignore[arg-type]
    assert fragment in str(info.value)


@pytest.mark.parametrize("value", [None, 5000, uuid.UUID(TEMPLATE_TEXT).bytes])
def test_port_for_service_id_needs_a_guid(value: object) -> None:
    with pytest.raises(AddressError, match=r"service id must be a GUID string or a uuid\.UUID"):
        ids.port_for_service_id(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "00001388-facb-11e6-bd58-64006a7986d3",
        "00001388-FACB-11E6-BD58-64006A7986D3",
        "{00001388-facb-11e6-bd58-64006a7986d3}",
        "{00001388-FACB-11e6-bd58-64006a7986D3}",
    ],
)
def test_guid_strings_are_accepted_everywhere(text: str) -> None:
    """Issue 13.5: GUID text in any case, braces or not, wherever a service / VM id goes."""
    assert ids.port_for_service_id(text) == 5000
    assert ids.is_template_service_id(text)
    vm = "5d1b3f57-1f3e-4c8d-9b6a-0123456789ab"
    host = hvsock.windows.host_view(hvsock.VsockAddress(hvsock.sockets.CID_HOST, 5000), vm.upper())
    assert host.vm_id == uuid.UUID(vm)
    assert hvsock.HyperVAddress(vm, text) == hvsock.HyperVAddress(
        uuid.UUID(vm), uuid.UUID(text.strip("{}"))
    )
    assert hvsock.windows.guest_view(hvsock.HyperVAddress("{" + vm + "}", text)).port == 5000
    assert hvsock.HyperVAddress.for_port(vm, 5000).service_id == uuid.UUID(text.strip("{}"))


@pytest.mark.parametrize("text", ["not-a-guid", "x" * 100_000, "", "0000-facb"])
def test_bad_guid_strings_are_address_errors_quoted_short(text: str) -> None:
    with pytest.raises(AddressError) as info:
        ids.port_for_service_id(text)
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("text", "value"),
    [("0" * 10_000 + "52", 52), ("0x" + "0" * 5000 + "ff", 255), ("4294967295", U32)],
)
def test_numbers_with_many_leading_zeros(text: str, value: int) -> None:
    """Defect 8: thousands of leading zeros are still the number, not int()'s ValueError."""
    assert ids.parse_number(text, "port", 0, U32) == value
    assert hvsock.parse_address(f"vsock://3:{text}") == hvsock.VsockAddress(3, value)


@pytest.mark.parametrize(
    "text", ["\u0663", "\uff15\uff10", "1\u0663", "\u00b2", "-1", " 5", "5 ", "0x", "", "1" * 5000]
)
def test_numbers_take_only_ascii_digits(text: str) -> None:
    """Defect 8: Unicode digits are refused by every reader of numbers alike."""
    with pytest.raises(AddressError) as info:
        ids.parse_number(text, "port", 0, U32)
    assert len(str(info.value)) < 300
    with pytest.raises(AddressError):
        hvsock.parse_address(f"vsock://3:{text}")


@settings(max_examples=400, deadline=None)
@given(st.integers(0, U32))
def test_port_round_trip(port: int) -> None:
    sid = ids.service_id_for_port(port)
    assert ids.is_template_service_id(sid)
    assert ids.port_for_service_id(sid) == port
    assert str(sid) == f"{port:08x}-facb-11e6-bd58-64006a7986d3"


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.uuids(), st.integers(0, U32).map(ids.service_id_for_port)))
def test_any_service_id_maps_to_a_port_or_raises_address_error(sid: uuid.UUID) -> None:
    if ids.is_template_service_id(sid):
        assert ids.service_id_for_port(ids.port_for_service_id(sid)) == sid
    else:
        with pytest.raises(AddressError, match="VSOCK template"):
            ids.port_for_service_id(sid)


# --------------------------------------------------------------------------------------
# parse_guid
# --------------------------------------------------------------------------------------
PARENT_TEXT = "a42e7cda-d03f-480c-9cc2-a4de20abb878"


@pytest.mark.parametrize(
    "text",
    [
        PARENT_TEXT,
        PARENT_TEXT.upper(),
        "A42e7CDA-d03F-480c-9cc2-A4DE20abb878",
        "{" + PARENT_TEXT + "}",
        "{" + PARENT_TEXT.upper() + "}",
        "  " + PARENT_TEXT + "\t",
    ],
)
def test_parse_guid_accepts_any_case_and_braces(text: str) -> None:
    assert ids.parse_guid(text) == ids.PARENT


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{}",
        "parent",
        "a42e7cdad03f480c9cc2a4de20abb878",  # uuid.UUID takes it; an address does not
        "urn:uuid:" + PARENT_TEXT,
        "{" + PARENT_TEXT,
        PARENT_TEXT + "}",
        "{{" + PARENT_TEXT + "}}",
        PARENT_TEXT[:-1],
        PARENT_TEXT + "0",
        PARENT_TEXT.replace("a", "g", 1),
        PARENT_TEXT.replace("-", "", 1),
        PARENT_TEXT.replace("-", " ", 1),
        "a42e7cd-ad03f-480c-9cc2-a4de20abb878",  # right digits, wrong groups
        "a42e7cda-d03f-480c-9cc2-a4de20abb87\u0668",  # an Arabic-Indic digit
        "\uff10" * 8 + "-0000-0000-0000-" + "0" * 12,  # full-width digits
        "+42e7cda-d03f-480c-9cc2-a4de20abb878",
    ],
)
def test_parse_guid_refuses_non_guids(text: str) -> None:
    with pytest.raises(AddressError) as info:
        ids.parse_guid(text, what="VM id")
    message = str(info.value)
    assert f"VM id {text!r} is not a GUID" in message
    assert "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" in message


@settings(max_examples=300, deadline=None)
@given(st.uuids(), st.booleans(), st.booleans())
def test_parse_guid_round_trip(guid: uuid.UUID, upper: bool, braces: bool) -> None:
    text = str(guid).upper() if upper else str(guid)
    assert ids.parse_guid("{" + text + "}" if braces else text) == guid


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=40))
def test_parse_guid_returns_a_uuid_or_raises_address_error(text: str) -> None:
    try:
        guid = ids.parse_guid(text)
    except AddressError:
        return
    assert ids.parse_guid(str(guid)) == guid
