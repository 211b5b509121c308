"""The one TOML loader of the servers' config files (hvsock._server.config): relay.toml
and agent.toml report every problem at once, each at its own line, wherever in the
file it is (property-based: bad keys among good ones, comments and blank lines)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hvsock
import hvsock.forwarding
import hvsock.services
from hvsock._builtin.agent import config as agent_config
from hvsock._relay.config import parse_toml
from hvsock._server.config import ConfigError, Lines, parse

FILLER = st.sampled_from(["", "# a comment", "   ", "# [[forward]] in a comment"])

RELAY_GOOD = {
    "max_connections": "5",
    "retries": "2",
    "grace": "3",
    "backlog": "16",
    "idle_timeout": "60",
    "busy_poll": "0",
}
RELAY_BAD = {
    "max_connections": "0",
    "retries": "-1",
    "workers": '"many"',
    "grace": "-1",
    "chunk_size": "10",
    "data_path": '"teleport"',
    "busy_poll": "1.0",
    "backlog": "0",
    "connect_timeout": "0",
    "max_buffer_memory": "1",
    "mode": "4096",
    "max_conections": "5",
    "allow_targets": '"everywhere"',
}
FORWARD_BAD = [
    "colour = 1",
    'allow = ["uid:x"]',
    'target = "ftp://nope"',
    'listen = "tcp://127.0.0.1:99999"',
    'allow = "everyone"',
]


@st.composite
def relay_files(draw: st.DrawFn) -> tuple[str, set[int]]:
    """A relay.toml with some bad lines, and the numbers of those lines."""
    entries: list[tuple[str, bool]] = []
    good = draw(st.lists(st.sampled_from(sorted(RELAY_GOOD)), unique=True))
    bad = draw(st.lists(st.sampled_from(sorted(RELAY_BAD)), unique=True, max_size=4))
    bad = [k for k in bad if k not in good]
    entries += [(f"{k} = {RELAY_GOOD[k]}", False) for k in good]
    entries += [(f"{k} = {RELAY_BAD[k]}", True) for k in bad]
    entries += [(f, False) for f in draw(st.lists(FILLER, max_size=4))]
    top = draw(st.permutations(entries))
    lines: list[tuple[str, bool]] = list(top)
    for _ in range(draw(st.integers(1, 3))):
        lines.append(("[[forward]]", False))
        body = [('listen = "tcp://127.0.0.1:0"', False), ('target = "tcp://127.0.0.1:1"', False)]
        wrong = draw(st.one_of(st.none(), st.sampled_from(FORWARD_BAD)))
        if wrong is not None:
            key = wrong.split(" ")[0]
            body = [entry for entry in body if not entry[0].startswith(key + " ")]
            body.append((wrong, True))
        body += [(f, False) for f in draw(st.lists(FILLER, max_size=2))]
        lines += draw(st.permutations(body))
    text = "".join(line + "\n" for line, _ in lines)
    return text, {n for n, (_, is_bad) in enumerate(lines, 1) if is_bad}


@settings(max_examples=150, deadline=None)
@given(relay_files())
def test_relay_toml_names_the_line_of_every_problem(case: tuple[str, set[int]]) -> None:
    text, bad_lines = case
    if not bad_lines:
        assert isinstance(parse_toml(text, "r.toml"), hvsock.forwarding.RelayConfig)
        return
    with pytest.raises(ConfigError) as info:
        parse_toml(text, "r.toml")
    assert isinstance(info.value, hvsock.ArgumentError)
    assert {line for line, _ in info.value.problems} == bad_lines, info.value.problems
    for line in bad_lines:
        assert f"r.toml:{line}: " in str(info.value)


AGENT_GOOD = {
    "agent": ["max_connections = 8", "grace = 0", "grace = 3"],
    "info": ["enabled = true"],
    "time": ["allow_set = false", "max_step = 2.5"],
    "exec": ["max_sessions = 4", "allow_user = false"],
}
AGENT_BAD = {
    "agent": [
        "max_connections = 0",
        'max_connections = "x"',
        "grace = -1",
        'grace = "soon"',
        "listen = 5",
        'allow = "host"',
        "colour = 1",
    ],
    "info": ['enabled = "yes"', "foo = 1"],
    "time": ["allow_set = 1", "max_step = -1", "max_step = 0"],
    "exec": ["max_sessions = 0", "max_timeout = true", 'allow = ["uid:x"]'],
}


@st.composite
def agent_files(draw: st.DrawFn) -> tuple[str, set[int]]:
    """An agent.toml with at least one bad line, and the numbers of the bad lines."""
    lines: list[tuple[str, bool]] = []
    sections = draw(st.lists(st.sampled_from(sorted(AGENT_GOOD)), unique=True, min_size=1))
    for section in sections:
        lines.append((f"[{section}]", False))
        body = [
            (entry, False)
            for entry in draw(
                st.lists(st.sampled_from(AGENT_GOOD[section]), unique_by=lambda e: e.split()[0])
            )
        ]
        used = {entry.split()[0] for entry, _ in body}
        bad = [
            e
            for e in draw(
                st.lists(
                    st.sampled_from(AGENT_BAD[section]),
                    unique_by=lambda e: e.split()[0],
                    max_size=2,
                )
            )
            if e.split()[0] not in used
        ]
        body += [(entry, True) for entry in bad]
        body += [(f, False) for f in draw(st.lists(FILLER, max_size=2))]
        lines += draw(st.permutations(body))
    if not any(is_bad for _, is_bad in lines):
        lines.append(("[info]" if "info" not in sections else "[cp]", False))
        lines.append(("foo = 1", True))
    text = "".join(line + "\n" for line, _ in lines)
    return text, {n for n, (_, is_bad) in enumerate(lines, 1) if is_bad}


@settings(max_examples=150, deadline=None)
@given(agent_files())
def test_agent_toml_names_the_line_of_every_problem(case: tuple[str, set[int]]) -> None:
    text, bad_lines = case
    with pytest.raises(agent_config.ConfigError) as info:
        agent_config.parse_config(text, "a.toml")
    assert {line for line, _ in info.value.problems} == bad_lines, info.value.problems
    for line in bad_lines:
        assert f"a.toml:{line}: " in str(info.value)


@pytest.mark.parametrize(
    "parse_text",
    [
        lambda text: parse_toml(text, "c.toml"),
        lambda text: agent_config.parse_config(text, "c.toml"),
    ],
)
def test_a_toml_syntax_error_names_its_line_in_both_loaders(parse_text: object) -> None:
    text = '# one\n\n[[forward]]\nlisten = "tcp://127.0.0.1:0"\ntarget = \n'
    with pytest.raises(ConfigError) as info:
        parse_text(text)  # type: ignore[operator]
    assert info.value.problems[0][0] == 5
    assert str(info.value).startswith("c.toml:5: not valid TOML: ")
    assert "column" in str(info.value)


def test_both_loaders_raise_the_one_config_error() -> None:
    assert agent_config.ConfigError is ConfigError
    assert issubclass(ConfigError, hvsock.ArgumentError)


def test_lines_finds_tables_keys_and_the_nth_array_table() -> None:
    text = (
        'top = 1\n[agent]\n"quoted" = 2\n  spaced  = 3\n[[forward]]\nlisten = "a"\n'
        "[[ forward ]] # two\ntarget = 'b'\n[exec]\n"
    )
    lines = Lines(text)
    assert lines.of("", "top") == 1
    assert lines.of("agent") == 2
    assert lines.of("agent", "quoted") == 3
    assert lines.of("agent", "spaced") == 4
    assert lines.of("forward[0]", "listen") == 6
    assert lines.of("forward[1]") == 7
    assert lines.of("forward[1]", "target") == 8
    assert lines.of("forward[1]", "listen") == 7  # not there: the table's header
    assert lines.of("exec", "enabled") == 9
    assert lines.of("nowhere") is None
    data, _ = parse(text, "x.toml")
    assert data["forward"][1] == {"target": "b"}
