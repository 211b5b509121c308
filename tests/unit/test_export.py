"""--export: the PowerShell script and the .reg file, and reading .reg files back."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvsock._errors import RegistryError
from hvsock._windows.export import (
    parse_reg,
    ps_quote,
    reg_quote,
    registration_script,
    to_ps1,
    to_reg,
)
from hvsock._windows.registry import (
    SERVICES_KEY,
    Change,
    Registration,
    RegistryEdit,
    Removal,
    apply_edits,
    register_service,
    registered_services,
)
from hvsock.testing import MemoryRegistry
from hvsock.windows import service_id_for_port

from ..fakes import fixture, outcome

SID = service_id_for_port(5000)
RANDOM_SID = uuid.UUID("7c1e4a2b-9d3f-4e8a-b6c5-2f1a0e9d8c7b")
HKLM_KEY = "HKEY_LOCAL_MACHINE\\" + SERVICES_KEY


def test_reg_file_for_a_registration_and_a_removal() -> None:
    text = to_reg([Registration(SID, 'My "agent" C:\\x'), Removal(RANDOM_SID, force=True)])
    assert text.splitlines() == [
        "Windows Registry Editor Version 5.00",
        "",
        f'; hvsock: register "My \\"agent\\" C:\\\\x" as {SID} (vsock port 5000)',
        f"[{HKLM_KEY}\\{SID}]",
        '"CreatedBy"="hvsock"',
        '"ElementName"="My \\"agent\\" C:\\\\x"',
        "",
        f"; hvsock: remove {RANDOM_SID}, whatever made it (a .reg file cannot check)",
        f"[-{HKLM_KEY}\\{RANDOM_SID}]",
        "",
    ]


def test_reg_round_trip_gives_the_same_entries_as_registering() -> None:
    changes: list[Change] = [
        Registration(SID, "My agent"),
        Registration(RANDOM_SID, "Ünïcode ✓ 'quoted'"),
    ]
    edits = parse_reg(to_reg(changes))
    assert edits == [edit for change in changes for edit in change.edits()]
    from_file, direct = MemoryRegistry(), MemoryRegistry()
    apply_edits(from_file, edits)
    for change in changes:
        assert isinstance(change, Registration)
        register_service(change.name, change.service_id, registry=direct)
    assert from_file.snapshot() == direct.snapshot()
    apply_edits(from_file, parse_reg(to_reg([Removal(SID)])))
    assert [e.service_id for e in registered_services(from_file)] == [RANDOM_SID]


def test_an_administrators_reg_file() -> None:
    text = fixture("admin-written.reg").decode("utf-16-le")
    edits = parse_reg(text)
    assert edits == [
        RegistryEdit(
            f"{SERVICES_KEY}\\{{00000016-FACB-11E6-BD58-64006A7986D3}}",
            (("ElementName", 'SSH for the "dev" VMs'),),
        ),
        RegistryEdit(
            f"{SERVICES_KEY}\\7c1e4a2b-9d3f-4e8a-b6c5-2f1a0e9d8c7b",
            (("ElementName", "C:\\agents\\sync.exe"), ("CreatedBy", "hvsock")),
        ),
        RegistryEdit(f"{SERVICES_KEY}\\00001388-facb-11e6-bd58-64006a7986d3", delete=True),
    ]
    registry = MemoryRegistry()
    apply_edits(registry, edits)
    assert [(e.port, e.name, e.origin) for e in registered_services(registry)] == [
        (None, "C:\\agents\\sync.exe", "hvsock"),
        (22, 'SSH for the "dev" VMs', "other"),
    ]


def test_reg_parser_tolerates_what_regedit_does() -> None:
    text = (
        "REGEDIT4\r\n\r\n; comment\r\n  [HKLM\\A\\B]  \r\n"
        '"x" = "1"\r\n\r\n[hkey_local_machine\\A\\C]\r\n'
    )
    assert parse_reg("\n\n" + text) == [RegistryEdit("A\\B", (("x", "1"),)), RegistryEdit("A\\C")]


BAD_REG = [
    ("", "starts with"),
    ("\n  \n", "starts with"),
    ("Windows Registry Editor Version 4.00\n", "starts with"),
    ('[HKEY_LOCAL_MACHINE\\A]\n"x"="y"\n', "starts with"),
    ("REGEDIT4\n[HKEY_CURRENT_USER\\A]\n", "line 2: key 'HKEY_CURRENT_USER\\\\A' is not under"),
    ("REGEDIT4\n[HKEY_LOCAL_MACHINE]\n", "has an empty part"),
    ("REGEDIT4\n[HKEY_LOCAL_MACHINE\\]\n", "has an empty part"),
    ("REGEDIT4\n[HKEY_LOCAL_MACHINE\\A\\\\B]\n", "has an empty part"),
    ("REGEDIT4\n[HKEY_LOCAL_MACHINE\\A\n", "line 2: a key line ends with ']'"),
    ('REGEDIT4\n"x"="y"\n', "line 2: a value before any [key] line"),
    ('REGEDIT4\n[HKLM\\A]\n"x"=dword:00000001\n', "line 3: value 'x' is 'dword:00000001'"),
    ('REGEDIT4\n[HKLM\\A]\n"x"=hex:01,02\n', "string values only"),
    ('REGEDIT4\n[HKLM\\A]\n"x"=-\n', "string values only"),
    ('REGEDIT4\n[HKLM\\A]\n@="default"\n', "a default value (@=)"),
    ("REGEDIT4\n[HKLM\\A]\nx=1\n", 'is not a "name"="value" line'),
    ('REGEDIT4\n[HKLM\\A]\n"x"\n', "'=' must follow the value name"),
    ('REGEDIT4\n[HKLM\\A]\n"x="y"\n', "'=' must follow the value name"),
    ('REGEDIT4\n[HKLM\\A]\n"x"="y\n', "line 3: a string is not closed"),
    ('REGEDIT4\n[HKLM\\A]\n"x"="a\\tb"\n', "a backslash in a string must be written"),
    ('REGEDIT4\n[HKLM\\A]\n"x"="y\\\n', "a backslash in a string must be written"),
    ('REGEDIT4\n[HKLM\\A]\n"x"="y" z\n', "text after the value's closing quote"),
    ('REGEDIT4\n[-HKLM\\A]\n"x"="y"\n', "a value under a deleted key"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_REG, ids=[b[1][:30] for b in BAD_REG])
def test_bad_reg_text_is_a_registry_error_naming_the_line(text: str, fragment: str) -> None:
    with pytest.raises(RegistryError) as info:
        parse_reg(text)
    assert fragment in str(info.value)


def test_non_text_is_refused() -> None:
    with pytest.raises(RegistryError, match="must be text"):
        parse_reg(b"REGEDIT4")  # type: ignore[arg-type]


def test_unknown_export_format() -> None:
    with pytest.raises(RegistryError, match="use one of: ps1, reg"):
        registration_script([Registration(SID, "x")], "bat")
    assert registration_script([Registration(SID, "x")], "reg") == to_reg([Registration(SID, "x")])
    assert registration_script([Registration(SID, "x")]) == to_ps1([Registration(SID, "x")])


# -- PowerShell ------------------------------------------------------------------------

PS_QUOTES = "'\u2018\u2019\u201a\u201b"


def ps_literals(line: str) -> tuple[list[str], str]:
    """The single-quoted literals of a PowerShell line (read as PowerShell reads them),
    and the line with each literal replaced by <lit>."""
    literals, rest = [], []
    i = 0
    while i < len(line):
        if line[i] in PS_QUOTES:
            value = []
            i += 1
            while True:
                assert i < len(line), f"unclosed literal in {line!r}"
                if line[i] in PS_QUOTES:
                    if i + 1 < len(line) and line[i + 1] in PS_QUOTES:
                        value.append(line[i + 1])
                        i += 2
                        continue
                    i += 1
                    break
                value.append(line[i])
                i += 1
            literals.append("".join(value))
            rest.append("<lit>")
        else:
            rest.append(line[i])
            i += 1
    return literals, "".join(rest)


def test_ps_quote_doubles_every_kind_of_single_quote() -> None:
    assert ps_quote("it's") == "'it''s'"
    assert ps_quote("\u2018x\u2019") == "'\u2018\u2018x\u2019\u2019'"
    assert ps_quote('$env:x `n "y"') == "'$env:x `n \"y\"'"
    assert reg_quote('a\\"b') == '"a\\\\\\"b"'


def test_ps1_registration_checks_before_writing() -> None:
    script = to_ps1([Registration(SID, "My agent")])
    assert script.startswith("# Hyper-V socket service registration, written by hvsock.\n")
    assert "$ErrorActionPreference = 'Stop'" in script
    assert f"$root = 'HKLM:\\{SERVICES_KEY}'" in script
    assert "is Hyper-V enabled on this machine?" in script
    assert f"New-Item -Path $root -Name '{SID}'" in script
    assert (
        "New-ItemProperty -LiteralPath $key -Name 'ElementName' -Value 'My agent' "
        "-PropertyType String -Force"
    ) in script
    assert "elseif ($old -ceq 'My agent')" in script  # same name: nothing to do
    assert f"throw ('{SID} is already registered as ' + $old" in script
    # the marker is written before the name
    assert script.index("-Name 'CreatedBy'") < script.index("-Name 'ElementName'")


def test_ps1_removal_checks_the_marker_unless_forced() -> None:
    careful = to_ps1([Removal(RANDOM_SID)])
    assert "(Get-ItemProperty -LiteralPath $key).CreatedBy -cne 'hvsock'" in careful
    assert "was not registered by hvsock; it is left alone" in careful
    forced = to_ps1([Removal(RANDOM_SID, force=True)])
    assert "CreatedBy" not in forced
    assert "Remove-Item -LiteralPath $key" in forced


# -- properties ----------------------------------------------------------------------

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=256).filter(
    lambda n: n.isprintable() and n == n.strip()
)
service_ids = st.one_of(st.uuids(), st.integers(0, 0xFFFFFFFF).map(service_id_for_port))
changes = st.lists(
    st.one_of(
        st.builds(Registration, service_ids, names),
        st.builds(
            Removal,
            service_ids.filter(
                lambda s: (
                    str(s)
                    not in (
                        "999e53d4-3d5c-4c3e-8779-bed06ec056e1",
                        "a5201c21-2770-4c11-a68e-f182edb29220",
                    )
                )
            ),
            st.booleans(),
        ),
    ),
    max_size=4,
)


@settings(max_examples=300, deadline=None)
@given(changes)
def test_reg_export_then_parse_round_trip(chosen: list[Change]) -> None:
    assert parse_reg(to_reg(chosen)) == [edit for change in chosen for edit in change.edits()]


@settings(max_examples=300, deadline=None)
@given(names, service_ids)
def test_ps1_carries_any_name_exactly_and_its_code_never_changes(name: str, sid: uuid.UUID) -> None:
    script = to_ps1([Registration(sid, name)])
    plain = to_ps1([Registration(sid, "X")])
    lines, plain_lines = script.splitlines(), plain.splitlines()
    assert len(lines) == len(plain_lines)
    for line, plain_line in zip(lines, plain_lines, strict=True):
        if line.lstrip().startswith("#"):
            continue  # comments may show the name
        literals, code = ps_literals(line)
        assert code == ps_literals(plain_line)[1]  # the name only ever sits in literals
        if "-Name 'ElementName'" in line:
            assert literals[-1] == name


@settings(max_examples=500, deadline=None)
@given(st.text())
def test_arbitrary_text_parses_or_raises_registry_error(text: str) -> None:
    for candidate in (text, "REGEDIT4\n" + text, f"REGEDIT4\n[HKLM\\A]\n{text}"):
        assert outcome(lambda c=candidate: parse_reg(c), RegistryError)  # type: ignore[misc]


TOKENS = [
    "Windows Registry Editor Version 5.00",
    "\n",
    "\r\n",
    "[",
    "]",
    "[-",
    "HKEY_LOCAL_MACHINE",
    "\\",
    '"',
    "=",
    "@",
    "-",
    ";",
    "dword:",
    "hex:",
    "A",
    "x",
    " ",
    "\\\\",
    '\\"',
]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(TOKENS), max_size=40).map("".join))
def test_token_soup_parses_or_raises_registry_error(text: str) -> None:
    assert outcome(lambda: parse_reg(text), RegistryError)
