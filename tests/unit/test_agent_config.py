"""The agent's TOML configuration: defaults, and every problem reported at its line."""

from __future__ import annotations

import pytest

import hvsock
from hvsock._builtin.agent import config as cfg
from hvsock._builtin.agent.host import CATALOGUE, default_allow

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
        cfg.parse_config("[info]\nenabled = false\n[health]\nenabled = false\n"
                         "[time]\nenabled = false\n")


def test_unreadable_file(tmp_path: object) -> None:
    with pytest.raises(cfg.ConfigError, match="cannot read"):
        cfg.load_config("/nonexistent/agent.toml")


def test_catalogue_covers_config_sections() -> None:
    assert set(cfg.SERVICE_KEYS) == set(CATALOGUE)


def test_default_allow_is_the_host_side() -> None:
    assert default_allow(hvsock.parse_address("vsock://any:5100")) == [hvsock.CID_HOST]
    assert default_allow(hvsock.parse_address("tcp://127.0.0.1:1")) == ["127.0.0.1", "::1"]
    import os
    assert default_allow(hvsock.parse_address("unix:///tmp/a")) == [f"uid:{os.geteuid()}"]
