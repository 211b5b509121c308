"""Every server command stops alike: one --grace, the lifecycle's default."""

from __future__ import annotations

import pytest

from hvsock._cli import args as cliargs
from hvsock._cli.main import build_parser
from hvsock._server.lifecycle import DEFAULT_GRACE

#: The server commands and the words that make them serve.
SERVERS = [
    ["echo-server", "unix:///tmp/x"],
    ["cp", "--serve", "/srv", "--listen", "unix:///tmp/x"],
    ["share", "/srv", "--listen", "unix:///tmp/x"],
    ["kvp", "serve"],
    ["bench", "server", "unix:///tmp/x"],
]


def test_the_cli_default_is_the_lifecycle_default() -> None:
    assert cliargs.DEFAULT_GRACE == DEFAULT_GRACE


@pytest.mark.parametrize("words", SERVERS, ids=lambda w: " ".join(w[:2]))
def test_each_server_command_takes_grace_with_the_one_default(words: list[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(words).grace == DEFAULT_GRACE
    assert parser.parse_args([*words, "--grace", "2.5"]).grace == 2.5


@pytest.mark.parametrize("bad", ["-1", "soon", "inf", "nan"])
def test_a_bad_grace_is_refused_with_what_to_give(bad: str) -> None:
    with pytest.raises(cliargs.UsageError, match="number of seconds"):
        build_parser().parse_args([*SERVERS[2], "--grace", bad])
