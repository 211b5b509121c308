"""The hvsock.vm connection plugin's pure parts: where it finds the cp service, and that
ansible-core finds the collection on sys.path with no configuration."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hvsock

pytest.importorskip("ansible", reason="ansible-core is in the test extra: pip install -e '.[test]'")

from ansible.errors import AnsibleError

from ansible_collections.hvsock.vm.plugins.connection.hvsock import (
    CP_PORT,
    cp_address_for,
)


@pytest.mark.parametrize(
    ("agent", "cp"),
    [
        ("vsock://3:5100", "vsock://3:5005"),
        ("hybrid:///run/fc/v.sock:5100", "hybrid:///run/fc/v.sock:5005"),
        ("tcp://127.0.0.1:5100", "tcp://127.0.0.1:5005"),
        ("hvsock://name:MyVM/5100", "hvsock://name:MyVM/5005"),
        (
            "hvsock://0f8a2b3c-1111-2222-3333-444455556666/5100",
            "hvsock://0f8a2b3c-1111-2222-3333-444455556666/5005",
        ),
    ],
)
def test_cp_address_is_the_agents_with_port_5005(agent: str, cp: str) -> None:
    assert cp_address_for(agent) == cp


@given(
    cid=st.integers(min_value=3, max_value=2**32 - 2),
    port=st.integers(min_value=1, max_value=2**32 - 2),
)
def test_cp_address_keeps_the_vm_for_any_vsock_address(cid: int, port: int) -> None:
    got = hvsock.parse_address(cp_address_for(str(hvsock.VsockAddress(cid, port))))
    assert got == hvsock.VsockAddress(cid, CP_PORT)


def test_unix_agent_needs_an_explicit_cp_address() -> None:
    with pytest.raises(AnsibleError, match="ansible_hvsock_cp_address"):
        cp_address_for("unix:///run/vm1/agent.sock")


def test_ansible_doc_finds_the_plugin_on_sys_path() -> None:
    with tempfile.TemporaryDirectory() as home:
        done = subprocess.run(
            [
                str(Path(sys.executable).with_name("ansible-doc")),
                "-t",
                "connection",
                "--json",
                "hvsock.vm.hvsock",
            ],
            # (C.UTF-8: ansible-core refuses to start in the C locale the busy pass uses)
            env={
                **os.environ,
                "LC_ALL": "C.UTF-8",
                "LANG": "C.UTF-8",
                "HOME": home,
                "ANSIBLE_LOCAL_TEMP": home,
                "ANSIBLE_CONFIG": os.path.join(home, "none.cfg"),
            },
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    assert "hvsock_retries" in done.stdout
    assert "ansible_hvsock_cp_address" in done.stdout
