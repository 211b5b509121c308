"""The relay's allow-target rules: matched field by field, a path glob per component."""

from __future__ import annotations

import dataclasses
import posixpath

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import hvsock
import hvsock.forwarding
from hvsock._relay.config import Forward, RelayConfig, TargetRule, parse_toml


def allowed(rule: str, target: str) -> bool:
    return TargetRule.parse(rule).matches(hvsock.parse_address(target))


# -- paths: one glob per component, no '..' ------------------------------------------------------
@pytest.mark.parametrize(
    "target",
    [
        "unix:///run/app/../../var/run/docker.sock",  # the escape issue 19 found
        "unix:///run/app/../app/a.sock",  # back in the same directory: still refused
        "unix:///run/app/x/../a.sock",
        "unix:///run/app/sub/a.sock",  # '*' does not cross '/'
        "unix:///run/app/.sock/../../etc.sock",
        "unix:///run/a.sock",
        "unix:///run/app",
        "unix://run/app/a.sock",  # relative: not the same path
        "tcp://127.0.0.1:1",
        "vsock://3:5000",
    ],
)
def test_a_unix_rule_refuses_what_is_not_directly_in_its_directory(target: str) -> None:
    assert not allowed("unix:///run/app/*.sock", target)


@pytest.mark.parametrize(
    "target",
    [
        "unix:///run/app/a.sock",
        "unix:///run/app/.sock",
        "unix:///run//app/a.sock",
        "unix:///run/./app/a.sock",
        "unix:////run/app/x.y.sock",
    ],
)
def test_a_unix_rule_takes_the_same_path_written_another_way(target: str) -> None:
    assert allowed("unix:///run/app/*.sock", target)


def test_a_dotdot_target_is_refused_with_the_reason() -> None:
    with pytest.raises(hvsock.ArgumentError, match=r"'\.\.' component.*without it"):
        hvsock.forwarding.Relay(
            "tcp://127.0.0.1:0",
            "unix:///run/app/../../var/run/docker.sock",
            allow_targets=["unix:///run/app/*.sock"],
        )


@pytest.mark.parametrize(
    ("rule", "fragment"),
    [
        ("unix:///run/app/../*.sock", "'..' component"),
        ("unix://", "names no path"),
        ("unix:///", "names no path"),
        ("hybrid:///run/fc/../v.sock:*", "'..' component"),
        ("hybrid:///run/fc/v.sock", "hybrid://PATH:PORT"),
        ("hybrid:///run/fc/v.sock:x", "port"),
        ("vsock://3", "vsock://CID:PORT"),
        ("vsock://three:*", "CID"),
        ("vsock://3:5x", "port"),
        ("vsock://3*:*", "CID"),
        ("hvsock://parent", "hvsock://VM/SERVICE"),
        ("hvsock://nowhere/*", "VM"),
    ],
)
def test_bad_rules_say_what_is_wrong(rule: str, fragment: str) -> None:
    with pytest.raises(hvsock.ArgumentError, match=fragment) as info:
        TargetRule.parse(rule)
    assert rule in str(info.value)


def test_hybrid_rules_match_path_components_and_the_port() -> None:
    rule = "hybrid:///run/fc/*.sock:52"
    assert allowed(rule, "hybrid:///run/fc/v.sock:52")
    assert not allowed(rule, "hybrid:///run/fc/v.sock:53")
    assert not allowed(rule, "hybrid:///run/fc/../../etc/v.sock:52")
    assert not allowed(rule, "hybrid:///run/fc/d/v.sock:52")
    assert allowed("hybrid:///run/fc/*.sock:*", "hybrid:///run/fc/v.sock:9")


def test_abstract_names_match_abstract_names_only() -> None:
    assert allowed("unix://@app-*", "unix://@app-1")
    assert not allowed("unix://@app-*", "unix://@app-1/x")
    assert not allowed("unix://@app-*", "unix:///app-1")
    assert not allowed("unix:///app-*", "unix://@app-1")


# -- ports and CIDs: every field is checked ------------------------------------------------------
@pytest.mark.parametrize(
    ("rule", "target", "ok"),
    [
        ("tcp://127.0.0.1:443", "tcp://127.0.0.1:443", True),
        ("tcp://127.0.0.1:443", "tcp://127.0.0.1:22", False),
        ("tcp://10.0.0.0/8:443", "tcp://10.1.2.3:22", False),
        ("tcp://*.example.com:443", "tcp://kms.example.com:80", False),
        ("tcp://[::1]:80", "tcp://[::1]:81", False),
        ("vsock://3:5000", "vsock://3:5000", True),
        ("vsock://3:5000", "vsock://3:22", False),
        ("vsock://3:5000", "vsock://4:5000", False),
        ("vsock://3:*", "vsock://33:1", False),
        ("vsock://host:0x16", "vsock://2:22", True),
        ("vsock://*:22", "vsock://7:22", True),
        ("vsock://*:22", "vsock://7:23", False),
        ("hvsock://parent/5000", "hvsock://parent/5000", True),
        ("hvsock://parent/5000", "hvsock://parent/5001", False),
        ("hvsock://parent/*", "hvsock://loopback/5000", False),
        ("hvsock://*/5000", "hvsock://loopback/5000", True),
        (
            "hvsock://{C08CB7B8-9B3C-408E-8E30-5E16A3AEB444}/22",
            "hvsock://c08cb7b8-9b3c-408e-8e30-5e16a3aeb444/22",
            True,
        ),
        ("hvsock://name:MyVM/*", "hvsock://name:myvm/22", True),
        ("hvsock://name:MyVM/*", "hvsock://name:other/22", False),
    ],
)
def test_every_field_of_a_rule_is_checked(rule: str, target: str, ok: bool) -> None:
    assert allowed(rule, target) is ok


@given(st.integers(1, 65535), st.integers(1, 65535))
def test_a_tcp_rule_with_a_port_admits_that_port_only(rule_port: int, port: int) -> None:
    assert allowed(f"tcp://127.0.0.1:{rule_port}", f"tcp://127.0.0.1:{port}") is (rule_port == port)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_a_vsock_rule_with_a_port_admits_that_port_only(rule_port: int, port: int) -> None:
    assert allowed(f"vsock://3:{rule_port}", f"vsock://3:{port}") is (rule_port == port)


# -- Hypothesis: no written path escapes a rule's directory --------------------------------------
_COMPONENT = st.sampled_from(["a", "b.sock", "..", ".", "", "x.sock", "*", "run", "app", ".sock"])


@given(st.lists(_COMPONENT, min_size=1, max_size=8))
def test_no_path_a_rule_admits_leads_outside_its_directory(components: list[str]) -> None:
    path = "/run/app/" + "/".join(components)
    try:
        target = hvsock.parse_address(f"unix://{path}")
    except hvsock.AddressError:
        return
    admitted = TargetRule.parse("unix:///run/app/*.sock").matches(target)
    # What the kernel would open: '..' resolved lexically (a symlink aside).
    where = posixpath.normpath(path)
    if admitted:
        assert ".." not in components
        assert posixpath.dirname(where) == "/run/app"
        assert where.endswith(".sock")
    else:
        assert (
            ".." in components
            or posixpath.dirname(where) != "/run/app"
            or not (where.endswith(".sock"))
        )


# At most 40 bytes of UTF-8: twice that plus '/run/app/' stays inside a Unix socket path.
@given(
    st.text(
        st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
        min_size=1,
        max_size=20,
    ).filter(lambda name: len(name.encode()) <= 40)
)
@example(".")
@example("..")
@example("*")
def test_a_star_admits_any_one_name_and_no_more(name: str) -> None:
    rule = TargetRule.parse("unix:///run/app/*")
    # '.' names the directory itself and '..' its parent: neither is a name in it.
    assert rule.matches(hvsock.parse_address(f"unix:///run/app/{name}")) is (
        name not in (".", "..")
    )
    assert not rule.matches(hvsock.parse_address(f"unix:///run/app/{name}/{name}"))


# -- every way to build a config is checked -------------------------------------------------------
def test_a_config_changed_after_it_was_built_is_checked_again() -> None:
    config = RelayConfig.build([Forward.build("tcp://127.0.0.1:0", "tcp://127.0.0.1:22")])
    with pytest.raises(hvsock.ArgumentError, match="not allowed"):
        config.with_(allow_targets=(TargetRule.parse("tcp://127.0.0.1:443"),))
    with pytest.raises(hvsock.ArgumentError, match="not allowed"):
        dataclasses.replace(config, allow_targets=(TargetRule.parse("vsock://3:*"),))
    with pytest.raises(hvsock.ArgumentError, match="not allowed"):
        RelayConfig(config.forwards, allow_targets=(TargetRule.parse("tcp://127.0.0.1:443"),))


def test_a_config_file_names_the_line_of_a_dotdot_target() -> None:
    text = (
        'allow_targets = ["unix:///run/app/*.sock"]\n\n[[forward]]\n'
        'listen = "tcp://127.0.0.1:0"\ntarget = "unix:///run/app/../../x.sock"\n'
    )
    with pytest.raises(hvsock.ArgumentError) as info:
        parse_toml(text, "r.toml")
    assert str(info.value).startswith("r.toml:5:")
    assert "'..'" in str(info.value)
