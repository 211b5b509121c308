"""The scp-like ``ADDRESS:PATH`` form of ``hvsock cp``: where the address ends.

Addresses have ':' of their own (vsock://3:5005, tcp://[::1]:22, hybrid:///p:52),
and remote paths may hold any character; the rule in
:func:`hvsock._core.filecopy.split_address_path` must give back exactly the
address and the path that were joined, for every address hvsock can write.
"""

from __future__ import annotations

import re
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hvsock import ArgumentError
from hvsock._core.addresses import parse_address
from hvsock._core.filecopy import ADDRESS_SCHEMES, split_address_path

ports = st.integers(0, 2**32 - 1).map(str) | st.integers(0, 0xFFFF).map(hex)
path_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\0")
remote_paths = st.text(path_chars, max_size=40)  # ':' and '/' included, empty too
# A socket path: anything but ':' (the documented limit of the form).
socket_paths = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\0:"),
    min_size=1,
    max_size=30,
).map(lambda p: "/" + p.lstrip("/"))
hostnames = st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True)
ipv6 = st.ip_addresses(v=6).map(lambda a: f"[{a}]")

addresses = st.one_of(
    st.builds(
        lambda c, p: f"vsock://{c}:{p}",
        st.integers(0, 2**32 - 1).map(str) | st.sampled_from(["any", "host", "local"]),
        ports | st.just("any"),
    ),
    st.builds(
        lambda h, p: f"tcp://{h}:{p}",
        hostnames | st.ip_addresses(v=4).map(str) | ipv6,
        st.integers(0, 65535),
    ),
    st.builds(lambda u, p: f"hybrid://{u}:{p}", socket_paths, ports),
    st.builds(
        lambda v, s: f"hvsock://{v}/{s}",
        st.sampled_from(["parent", "wildcard", "loopback"])
        | st.uuids().map(str)
        | st.text(
            st.characters(whitelist_categories=("L", "N", "P", "Zs"), blacklist_characters="/%"),
            min_size=1,
            max_size=12,
        )
        .filter(str.isprintable)
        .map(lambda n: "name:" + n),
        st.integers(0, 2**32 - 1).map(str) | st.uuids().map(str),
    ),
    socket_paths.map(lambda p: "unix://" + p),
)


@given(address=addresses, path=remote_paths)
def test_address_colon_path_splits_back_into_both(address: str, path: str) -> None:
    parse_address(address)  # a real address of hvsock's syntax
    assert split_address_path(f"{address}:{path}") == (address, path)


@given(text=st.text(path_chars, max_size=40))
def test_what_does_not_start_with_a_scheme_is_a_local_or_colon_path(text: str) -> None:
    prefixes = tuple(scheme + "://" for scheme in ADDRESS_SCHEMES)
    for arg in (text, ":" + text, "./vsock://3:5005:" + text, "http://x:1:" + text):
        if not arg.lower().startswith(prefixes):
            assert split_address_path(arg) is None


@pytest.mark.parametrize(
    ("arg", "address", "path"),
    [
        ("vsock://3:5005:/srv/x", "vsock://3:5005", "/srv/x"),
        ("vsock://3:5005:", "vsock://3:5005", ""),
        ("VSOCK://any:0x138d:a:b", "VSOCK://any:0x138d", "a:b"),
        ("tcp://[::1]:22:/srv/x", "tcp://[::1]:22", "/srv/x"),
        ("hybrid:///run/fc/v.sock:52:/srv", "hybrid:///run/fc/v.sock:52", "/srv"),
        (f"hvsock://{uuid.UUID(int=7)}/5005:/srv", f"hvsock://{uuid.UUID(int=7)}/5005", "/srv"),
        ("hvsock://name:My VM/5005:x", "hvsock://name:My VM/5005", "x"),
        ("unix:///run/cp.sock:/srv/x", "unix:///run/cp.sock", "/srv/x"),
        # The documented limits: a ':' inside a socket path ends the address there.
        ("unix:///tmp/a:b.sock:/x", "unix:///tmp/a", "b.sock:/x"),
        ("hybrid:///tmp/a:1:b.sock:52:/x", "hybrid:///tmp/a:1", "b.sock:52:/x"),
    ],
)
def test_the_documented_rule(arg: str, address: str, path: str) -> None:
    assert split_address_path(arg) == (address, path)


@pytest.mark.parametrize(
    "arg",
    [
        "vsock://3:5005",
        "tcp://[::1]:22",
        "hybrid:///v.sock:52",
        "hvsock://parent/5005",
        "unix:///run/cp.sock",
    ],
)
def test_an_address_without_a_path_says_how_to_write_one(arg: str) -> None:
    with pytest.raises(ArgumentError, match=re.escape(f"write ADDRESS:PATH, e.g. {arg}:/srv/file")):
        split_address_path(arg)
