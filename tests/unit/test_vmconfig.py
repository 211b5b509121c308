"""The pure readers of a KVM host's VM descriptions: libvirt domain XML, QEMU /
Firecracker / Cloud Hypervisor command lines, and the VMMs' JSON answers.

Good input gives the VM's name and vsock device; bad and hostile input (malformed,
huge, entity bombs, odd bytes) gives an HvsockError that says what was wrong.
"""

from __future__ import annotations

import json
from xml.sax.saxutils import escape, quoteattr

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hvsock import HvsockError
from hvsock._core import vmconfig
from hvsock._core.vmconfig import (
    CLOUD_HYPERVISOR,
    FIRECRACKER,
    QEMU,
    Domain,
    VmmCommand,
    VsockDevice,
    parse_cloud_hypervisor_info,
    parse_domain_xml,
    parse_firecracker_config,
    parse_firecracker_instance,
    parse_vmm_argv,
    split_qemu_options,
)

from ..fakes import fixture, outcome

# -- libvirt domain XML ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "domain"),
    [
        ("libvirt-web1-running.xml", Domain("web1", QEMU, True, VsockDevice(3, auto=True))),
        ("libvirt-db1-shutoff-fixed.xml", Domain("db1", QEMU, False, VsockDevice(42))),
        (
            "libvirt-build-shutoff-auto.xml",
            Domain("build", QEMU, False, VsockDevice(None, auto=True)),
        ),
        ("libvirt-legacy-novsock.xml", Domain("legacy", QEMU, True, None)),
    ],
)
def test_recorded_domains(name: str, domain: Domain) -> None:
    assert parse_domain_xml(fixture(name)) == domain
    # str with an XML declaration (what libvirt-python's XMLDesc gives) reads the same
    text = "<?xml version='1.0' encoding='UTF-8'?>\n" + fixture(name).decode()
    assert parse_domain_xml(text) == domain


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
]>
<domain type='kvm'><name>&lol3;</name></domain>"""
EXTERNAL = """<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/shadow">]>
<domain type='kvm'><name>&x;</name></domain>"""


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"<domain type='kvm'><name>web1</name>", "not well-formed XML"),
        (b"", "not well-formed XML"),
        (b"\xff\xfe<\x00d\x00", "not UTF-8 text"),
        (b"<network><name>default</name></network>", "a <network> document, not a libvirt"),
        (b"<domain type='kvm'><name> </name></domain>", "has no <name>"),
        (b"<domain type='kvm'><devices><vsock/></devices></domain>", "has no <name>"),
        (
            b"<domain type='kvm'><name>x</name><devices><vsock><cid auto='no' address='two'/>"
            b"</vsock></devices></domain>",
            "'two' is not a number",
        ),
        (
            b"<domain type='kvm'><name>x</name><devices><vsock><cid address='2'/>"
            b"</vsock></devices></domain>",
            "2 is not a guest CID",
        ),
        (
            b"<domain type='kvm'><name>x</name><devices><vsock><cid address='4294967295'/>"
            b"</vsock></devices></domain>",
            "is not a guest CID",
        ),
        (
            b"<domain type='kvm'><name>x</name><devices><vsock><cid address='"
            + b"9" * 5000
            + b"'/></vsock></devices></domain>",
            "is not a number",
        ),
        (BILLION_LAUGHS.encode(), "has a DOCTYPE declaration"),
        (EXTERNAL.encode(), "has a DOCTYPE declaration"),
        (b"<domain><!ENTITY x 'y'><name>x</name></domain>", "has a ENTITY declaration"),
        (
            b"<domain><name>x</name>" + b"<a/>" * (vmconfig.MAX_XML // 4) + b"</domain>",
            "bytes long; a domain's XML is at most",
        ),
    ],
)
def test_bad_and_hostile_xml_is_refused_with_a_reason(data: bytes, fragment: str) -> None:
    with pytest.raises(HvsockError) as info:
        parse_domain_xml(data, "domain 'x''s XML")
    assert fragment in str(info.value)
    assert "domain 'x''s XML" in str(info.value)


def test_deep_nesting_within_the_cap_parses() -> None:
    deep = (
        b"<domain type='qemu'><name>deep</name>" + b"<x>" * 50000 + b"</x>" * 50000 + b"</domain>"
    )
    assert parse_domain_xml(deep) == Domain("deep", QEMU, False, None)


names = st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40).filter(
    lambda s: s.strip() == s and s
)
cids = st.integers(vmconfig.MIN_GUEST_CID, vmconfig.MAX_GUEST_CID)


@given(
    name=names,
    cid=st.none() | cids,
    auto=st.booleans(),
    active=st.booleans(),
    kind=st.sampled_from(["kvm", "qemu", "ch", "xen"]),
)
def test_generated_domains_round_trip(
    name: str, cid: int | None, auto: bool, active: bool, kind: str
) -> None:
    address = f" address='{cid}'" if cid is not None else ""
    root_id = " id='7'" if active else ""
    xml = (
        f"<domain type={quoteattr(kind)}{root_id}><name>{escape(name)}</name><devices>"
        f"<vsock model='virtio'><cid auto='{'yes' if auto else 'no'}'{address}/></vsock>"
        "</devices></domain>"
    )
    hypervisor = {"kvm": QEMU, "qemu": QEMU, "ch": CLOUD_HYPERVISOR}.get(kind, kind)
    assert parse_domain_xml(xml.encode()) == Domain(
        name, hypervisor, active, VsockDevice(cid, auto=auto)
    )


@settings(max_examples=300)
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_any_bytes_give_a_domain_or_an_hvsock_error(data: bytes) -> None:
    said = outcome(
        lambda: parse_domain_xml(b"<domain><name>n</name>" + data + b"</domain>"), HvsockError
    )
    assert said  # "ok", or the error's message: never empty, never another exception


# -- command lines -------------------------------------------------------------------------------

LIBVIRT_QEMU = [
    "/usr/bin/qemu-system-x86_64",
    "-name",
    "guest=web1,debug-threads=on",
    "-S",
    "-object",
    '{"qom-type":"secret","id":"masterKey0","format":"raw","file":"/var/lib/x"}',
    "-machine",
    "pc-q35-8.2,usb=off,dump-guest-core=off",
    "-accel",
    "kvm",
    "-device",
    '{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0"}',
    "-device",
    '{"driver":"vhost-vsock-pci","id":"vsock0","guest-cid":3,"vhostfd":"28",'
    '"bus":"pci.7","addr":"0x0"}',
    "-sandbox",
    "on,obsolete=deny",
    "-msg",
    "timestamp=on",
]


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (LIBVIRT_QEMU, VmmCommand(QEMU, "web1", VsockDevice(3))),
        (
            [
                "qemu-system-x86_64",
                "-m",
                "768",
                "-name",
                "l2",
                "-device",
                "vhost-vsock-pci,guest-cid=3",
            ],
            VmmCommand(QEMU, "l2", VsockDevice(3)),
        ),
        (
            [
                "qemu-kvm",
                "--name",
                "a,,b,process=qemu-ab",
                "--device",
                "vhost-vsock-pci,id=v0,guest-cid=0x10",
            ],
            VmmCommand(QEMU, "a,b", VsockDevice(16)),
        ),
        (
            ["/opt/bin/qemu-system-aarch64", "-device", "driver=vhost-vsock-device,guest-cid=9"],
            VmmCommand(QEMU, None, VsockDevice(9)),
        ),
        (
            ["qemu-system-x86_64", "-name", "plain", "-device", "virtio-net-pci"],
            VmmCommand(QEMU, "plain", None),
        ),
        (["qemu-system-x86_64", "-name"], VmmCommand(QEMU, None, None)),
        (
            ["firecracker", "--api-sock", "/run/fc/fc1.sock", "--id", "fc1"],
            VmmCommand(FIRECRACKER, "fc1", api_socket="/run/fc/fc1.sock"),
        ),
        (
            ["/usr/bin/firecracker", "--id=fc2", "--config-file=vm.json", "--no-api"],
            VmmCommand(FIRECRACKER, "fc2", config_file="vm.json"),
        ),
        (
            ["firecracker"],
            VmmCommand(
                FIRECRACKER,
                vmconfig.FIRECRACKER_DEFAULT_ID,
                api_socket=vmconfig.FIRECRACKER_DEFAULT_API,
            ),
        ),
        (
            [
                "cloud-hypervisor",
                "--kernel",
                "vmlinux",
                "--api-socket",
                "path=/run/ch/ch1.sock",
                "--vsock",
                "cid=5,socket=/run/ch/ch1.vsock,iommu=off",
            ],
            VmmCommand(
                CLOUD_HYPERVISOR,
                "ch1",
                VsockDevice(5, "/run/ch/ch1.vsock"),
                api_socket="/run/ch/ch1.sock",
            ),
        ),
        (
            ["cloud-hypervisor", '--vsock=cid=6,socket="/tmp/a,b.vsock"'],
            VmmCommand(CLOUD_HYPERVISOR, "a,b", VsockDevice(6, "/tmp/a,b.vsock")),
        ),
        (["cloud-hypervisor", "--api-socket", "fd=3"], VmmCommand(CLOUD_HYPERVISOR, None, None)),
    ],
)
def test_vmm_command_lines(argv: list[str], command: VmmCommand) -> None:
    assert parse_vmm_argv(argv) == command


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bash", "-c", "qemu-system-x86_64 -device vhost-vsock-pci,guest-cid=3"],
        ["python3", "-m", "firecracker"],
        ["sshd: user@pts/0"],
    ],
)
def test_other_processes_are_not_vmms(argv: list[str]) -> None:
    assert parse_vmm_argv(argv) is None


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["qemu-system-x86_64", "-device", "vhost-vsock-pci,id=v"], "has no guest-cid"),
        (["qemu-system-x86_64", "-device", "vhost-vsock-pci,guest-cid=two"], "is not a number"),
        (["qemu-system-x86_64", "-device", "vhost-vsock-pci,guest-cid=1"], "not a guest CID"),
        (
            ["qemu-system-x86_64", "-device", '{"driver":"vhost-vsock-pci","guest-cid":true}'],
            "is not a number",
        ),
        (["qemu-system-x86_64", "-device", '{"driver":"vhost-vsock-pci",'], "is not JSON"),
        (["qemu-system-x86_64", "-device", '{"driver":' + "[" * 100000], "is not JSON"),
        (["cloud-hypervisor", "--vsock", "cid=3"], "lacks cid=N or socket=PATH"),
    ],
)
def test_unreadable_vsock_options_say_why(argv: list[str], fragment: str) -> None:
    with pytest.raises(HvsockError, match=fragment):
        parse_vmm_argv(argv)


option_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


# QEMU reads ",," as a comma wherever it stands, so a part that is empty or starts with a
# comma cannot follow a separator unambiguously: such parts are left out.
@given(st.lists(option_text.filter(lambda p: p[:1] not in ("", ",")), min_size=1, max_size=6))
def test_qemu_option_escaping_round_trips(parts: list[str]) -> None:
    assert split_qemu_options(",".join(p.replace(",", ",,") for p in parts)) == parts


@given(name=option_text.filter(bool), cid=cids, form=st.sampled_from(["plain", "guest"]))
def test_generated_qemu_lines(name: str, cid: int, form: str) -> None:
    escaped = name.replace(",", ",,")
    value = escaped if form == "plain" and "=" not in name else f"guest={escaped}"
    argv = ["qemu-system-x86_64", "-name", value, "-device", f"vhost-vsock-pci,guest-cid={cid}"]
    assert parse_vmm_argv(argv) == VmmCommand(QEMU, name, VsockDevice(cid))


@settings(max_examples=300)
@given(
    st.lists(
        st.sampled_from(
            [
                "-name",
                "-device",
                "--vsock",
                "--api-sock",
                "--id",
                "vhost-vsock-pci",
                "guest-cid=",
                "cid=",
                "socket=",
                ",",
                "=",
                "{",
                "}",
                '"',
                "3",
                "x",
                "--api-socket",
            ]
        )
        | option_text,
        max_size=8,
    ),
    st.sampled_from(["qemu-system-x86_64", "firecracker", "cloud-hypervisor"]),
)
def test_any_vmm_arguments_give_a_command_or_an_hvsock_error(tokens: list[str], vmm: str) -> None:
    argv = [vmm, *("".join(tokens[i : i + 2]) for i in range(0, len(tokens), 2))]
    said = outcome(lambda: parse_vmm_argv(argv), HvsockError)
    assert said  # "ok", or the error's message: never empty, never another exception
    if said == "ok":
        command = parse_vmm_argv(argv)
        assert command is not None
        assert command.hypervisor in (QEMU, FIRECRACKER, CLOUD_HYPERVISOR)


# -- JSON answers -------------------------------------------------------------------------------

FC_CONFIG = {
    "boot-source": {"kernel_image_path": "vmlinux", "boot_args": "console=ttyS0"},
    "drives": [],
    "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    "vsock": {"guest_cid": 3, "uds_path": "./v.sock"},
}


def test_firecracker_config_and_instance() -> None:
    assert parse_firecracker_config(json.dumps(FC_CONFIG), "c") == VsockDevice(3, "./v.sock")
    assert parse_firecracker_config(json.dumps({**FC_CONFIG, "vsock": None}), "c") is None
    assert parse_firecracker_config(b"{}", "c") is None
    assert parse_firecracker_instance(
        b'{"id":"fc1","state":"Running","vmm_version":"1.9.0","app_name":"Firecracker"}', "i"
    ) == ("fc1", "Running")
    assert parse_firecracker_instance(b"{}", "i") == (None, "unknown")


def test_cloud_hypervisor_info() -> None:
    info = {
        "config": {"vsock": {"cid": 4, "socket": "/run/ch/v.sock", "iommu": False}},
        "state": "Running",
        "memory_actual_size": 1 << 30,
    }
    assert parse_cloud_hypervisor_info(json.dumps(info), "i") == (
        VsockDevice(4, "/run/ch/v.sock"),
        "Running",
    )
    assert parse_cloud_hypervisor_info(b'{"config": {}}', "i") == (None, "unknown")


@pytest.mark.parametrize(
    ("parse", "data", "fragment"),
    [
        (parse_firecracker_config, b"not json", "is not JSON"),
        (parse_firecracker_config, b"[]", "is not a JSON object"),
        (parse_firecracker_config, b'{"vsock": 3}', "'vsock' is not an object"),
        (parse_firecracker_config, b'{"vsock": {"guest_cid": 3}}', "vsock.uds_path None"),
        (
            parse_firecracker_config,
            b'{"vsock": {"guest_cid": 3, "uds_path": "a\\u0000b"}}',
            "contains a NUL",
        ),
        (parse_firecracker_config, b'{"vsock": {"guest_cid": "3", "uds_path": "v"}}', None),
        (
            parse_firecracker_config,
            b'{"vsock": {"guest_cid": 2, "uds_path": "v"}}',
            "not a guest CID",
        ),
        (parse_firecracker_config, b"[" * 100000, "is not JSON"),
        (parse_firecracker_config, b" " * (vmconfig.MAX_JSON + 1), "refusing it"),
        (parse_firecracker_instance, b'{"id": 7}', "id 7 is not a non-empty string"),
        (parse_cloud_hypervisor_info, b'{"state": "Running"}', "no 'config'"),
        (
            parse_cloud_hypervisor_info,
            b'{"config": {"vsock": {"cid": 3, "socket": ""}}}',
            "config.vsock.socket '' is not",
        ),
    ],
)
def test_bad_json_answers_say_why(parse: object, data: bytes, fragment: str | None) -> None:
    assert callable(parse)
    if fragment is None:  # a CID as a string is accepted, as QEMU's options give it
        assert parse(data, "answer") == VsockDevice(3, "v")
        return
    with pytest.raises(HvsockError) as info:
        parse(data, "answer")
    assert fragment in str(info.value)
