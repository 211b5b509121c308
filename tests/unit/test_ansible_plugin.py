"""The hvsock.vm connection plugin's pure parts: where it finds the cp service, how it
watches a command's output for become's prompt and success line, and that ansible-core
finds the collection on sys.path with no configuration."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hvsock

pytest.importorskip("ansible", reason="ansible-core is in the test extra: pip install -e '.[test]'")

from ansible.errors import AnsibleError
from ansible.plugins.become.sudo import BecomeModule

from ansible_collections.hvsock.vm.plugins.connection.hvsock import (
    CP_PORT,
    _PromptAnswer,
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


PROMPT = "[sudo via ansible, key=k3y] password:"
SUCCESS = "BECOME-SUCCESS-k3y"


def _sudo() -> BecomeModule:
    """ansible-core's own sudo plugin (its check_success), with the prompt and success
    line build_become_command would have set (that needs the plugin loader's config)."""
    become = BecomeModule()
    become.prompt = PROMPT
    become.success = SUCCESS
    return become


def _cuts(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(
    parts=st.lists(
        st.sampled_from([PROMPT.encode(), SUCCESS.encode() + b"\n", b"x", b"\n", b"pass"]),
        max_size=12,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12),
    to_stderr=st.booleans(),
)
def test_prompts_and_success_are_found_wherever_the_output_is_cut(
    parts: list[bytes], cuts: list[int], to_stderr: bool
) -> None:
    """The output is searched a piece at a time: a prompt or success line cut across
    two pieces is found once, never twice, on stdout and stderr alike."""
    stream = b"".join(parts)
    answer = _PromptAnswer(_sudo(), b"pw", b"")
    feed = answer.on_stderr if to_stderr else answer.on_stdout
    for piece in _cuts(stream, cuts):
        feed(piece)
        assert answer.prompts == (answer.err if to_stderr else answer.out).count(PROMPT.encode())
        # Asked after every piece, as the waiting input asks it.
        expected = not to_stderr and _sudo().check_success(bytes(answer.out))
        assert answer.succeeded == expected
    assert answer.prompts == stream.count(PROMPT.encode())
    assert bytes(answer.err if to_stderr else answer.out) == stream


def test_the_password_goes_at_the_prompt_and_the_data_after_success() -> None:
    """The input generator as hvsock.exec takes it, piece by piece, while the output
    arrives (here fed between the takes, in the order a command prints it)."""
    answer = _PromptAnswer(_sudo(), b"pw", b"module input")
    pieces = answer.pieces()
    answer.on_stderr(PROMPT.encode()[:10])
    answer.on_stderr(PROMPT.encode()[10:])  # the prompt, in two pieces
    assert next(pieces) == b"pw\n"
    answer.on_stdout(b"\n" + SUCCESS.encode()[:5])
    answer.on_stdout(SUCCESS.encode()[5:] + b"\n")
    assert list(pieces) == [b"module input"]
    assert (answer.prompts, answer.succeeded) == (1, True)


def test_no_prompt_and_success_the_data_goes_alone() -> None:
    answer = _PromptAnswer(_sudo(), b"pw", b"module input")
    answer.on_stdout(SUCCESS.encode() + b"\n")
    assert list(answer.pieces()) == [b"module input"]


def test_a_second_prompt_ends_the_input_without_the_data() -> None:
    answer = _PromptAnswer(_sudo(), b"wrong", b"module input")
    pieces = answer.pieces()
    answer.on_stderr(PROMPT.encode())
    assert next(pieces) == b"wrong\n"
    answer.on_stderr(b"Sorry, try again.\n" + PROMPT.encode())
    assert list(pieces) == []
    assert (answer.prompts, answer.succeeded) == (2, False)


def test_output_with_neither_waits_until_the_command_ends() -> None:
    """A command that prints neither (it failed before sudo ran): the input waits,
    and ends with nothing sent once the command is over."""
    answer = _PromptAnswer(_sudo(), b"pw", b"module input")
    taken: list[bytes] = []
    reader = threading.Thread(target=lambda: taken.extend(answer.pieces()))
    reader.start()
    answer.on_stderr(b"sh: sudo: not found\n")
    answer.end()
    reader.join(60)
    assert not reader.is_alive()
    assert taken == []
