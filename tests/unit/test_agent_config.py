"""The agent's TOML configuration: defaults, and every problem reported at its line."""

from __future__ import annotations

import pytest

import hvsock
import hvsock.sockets
from hvsock._builtin.agent import config as cfg
from hvsock._builtin.agent.host import CATALOGUE, default_allow
from hvsock._server.peers import PrivilegedCid

GOOD = """\
[agent]
listen = "unix:///tmp/x.sock"
allow = ["uid:0"]
grace = 3

[exec]
enabled = true
max_timeout = 60
max_output = 1048576

[qga]
enabled = true
listen = "vsock://any:5104"
block = ["guest-shutdown"]

[time]
allow_set = false
"""


def test_good_config() -> None:
    config = cfg.parse_config(GOOD)
    assert config.listen == hvsock.parse_address("unix:///tmp/x.sock")
    assert config.allow == ["uid:0"]
    assert config.grace == 3.0
    assert config.enabled == ["exec", "info", "health", "time", "qga"]
    assert config.services["exec"].options == {"max_timeout": 60.0, "max_output": 1048576}
    assert config.services["qga"].listen == hvsock.parse_address("vsock://any:5104")


def test_no_config_has_exec_off() -> None:
    assert "exec" not in cfg.default_config().enabled
    assert cfg.default_config(["exec"]).enabled == ["exec"]


def test_every_problem_is_reported_with_its_line() -> None:
    text = """\
[agent]
listen = "nope://x"
bogus = 1

[exec]
enabled = "yes"
max_sessions = 0

[qga]
enabled = true

[wat]
x = 1
"""
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse_config(text, "a.toml")
    lines = {line for line, _ in info.value.problems}
    assert lines == {2, 3, 6, 7, 10, 12}, info.value.problems
    assert "a.toml:6: [exec] enabled must be true or false" in str(info.value)
    assert isinstance(info.value, hvsock.ArgumentError)


def test_toml_syntax_error_has_its_line() -> None:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse_config("[exec]\nenabled = true\nmax_output = = 3\n")
    assert info.value.problems[0][0] == 3


def test_nothing_enabled_is_a_problem() -> None:
    with pytest.raises(cfg.ConfigError, match="no service is enabled"):
        cfg.parse_config(
            "[info]\nenabled = false\n[health]\nenabled = false\n[time]\nenabled = false\n"
        )


def test_unreadable_file(tmp_path: object) -> None:
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load_config("/nonexistent/agent.toml")


def test_catalogue_covers_config_sections() -> None:
    assert set(cfg.SERVICE_KEYS) == set(CATALOGUE)


def test_default_allow_is_the_host_side() -> None:
    assert default_allow(hvsock.parse_address("vsock://any:5100")) == [hvsock.sockets.CID_HOST]
    assert default_allow(hvsock.parse_address("tcp://127.0.0.1:1")) == ["127.0.0.1", "::1"]
    import os

    me = os.geteuid()
    ours = [f"uid:{me}"] + (["uid:0"] if me else [])
    assert default_allow(hvsock.parse_address("unix:///tmp/a")) == ours
    # A hybrid listener's peer is the VMM's process: a uid, never a CID.
    assert default_allow(hvsock.parse_address("hybrid:///tmp/v.sock:5")) == ours


def test_services_that_run_commands_default_to_a_privileged_host_user() -> None:
    vsock = hvsock.parse_address("vsock://any:5100")
    for name in ("exec", "qga"):
        assert default_allow(vsock, name) == [PrivilegedCid(hvsock.sockets.CID_HOST)]
        with pytest.raises(hvsock.ArgumentError, match="every local user"):
            default_allow(hvsock.parse_address("tcp://127.0.0.1:1"), name)
    assert default_allow(vsock, "info") == [hvsock.sockets.CID_HOST]


def _problems(text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(cfg.ConfigError) as info:
        cfg.parse_config(text, "a.toml")
    return info.value.problems


def test_unknown_keys_in_a_service_section_are_errors() -> None:
    problems = _problems("[exec]\nenabled = true\nmax_sesions = 3\n\n[info]\nfoo = 1\n")
    assert problems[0][0] == 3
    assert "[exec] has no key 'max_sesions'" in problems[0][1]
    assert "max_sessions" in problems[0][1]  # the known ones are listed
    assert problems[1][0] == 6
    assert "[info] has no key 'foo'" in problems[1][1]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        # Rules a listener's kind can never match, at their line.
        (
            '[agent]\nlisten = "hybrid:///tmp/v.sock:5100"\nallow = [2]\n',
            3,
            "2 can never match a peer on hybrid",
        ),
        (
            '[agent]\nlisten = "tcp://127.0.0.1:5100"\n\nallow = ["uid:0"]\n',
            4,
            "uid:0 can never match a peer on tcp",
        ),
        (
            '[agent]\nlisten = "unix:///tmp/a.sock"\n[info]\nallow = [3]\n',
            4,
            "[info] allow: 3 can never match",
        ),
        # Strings once taken silently as TCP host names.
        ('[agent]\nallow = ["any"]\n', 2, '"any" does not exist'),
        ('[agent]\nallow = ["cid:x"]\n', 2, "CID number"),
        ('[agent]\nlisten = "tcp://127.0.0.1:5100"\nallow = ["localhost"]\n', 3, "never by name"),
        # exec and QGA on TCP need their own rules.
        (
            '[agent]\nlisten = "tcp://127.0.0.1:5100"\nallow = ["127.0.0.1"]\n[exec]\n'
            "enabled = true\n",
            5,
            '[exec] allow = ["127.0.0.1"]',
        ),
    ],
)
def test_allow_rules_are_checked_against_their_address(text: str, line: int, words: str) -> None:
    problems = _problems(text)
    assert any(at == line and words in message for at, message in problems), problems


def test_allow_forms_in_toml() -> None:
    config = cfg.parse_config(
        '[exec]\nenabled = true\nallow = ["host:privileged", "cid:3", 4, "5:privileged"]\n'
    )
    assert config.services["exec"].allow == sorted(
        [PrivilegedCid(2), 3, 4, PrivilegedCid(5)], key=str
    )
    # Plain CIDs for exec are allowed, with a warning at their line.
    assert config.warnings
    assert config.warnings[0][0] == 3
    assert "any source port" in config.warnings[0][1]


def test_exec_on_tcp_with_its_own_rules_is_fine() -> None:
    config = cfg.parse_config(
        '[agent]\nlisten = "tcp://127.0.0.1:5100"\n[exec]\nenabled = true\nallow = ["127.0.0.1"]\n'
    )
    assert config.services["exec"].allow == ["127.0.0.1"]
    assert not config.warnings
