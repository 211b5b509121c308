"""refused_by (hvsock._server.peers): the one allowlist check of ServiceHost, the agent's
shared address and the relay. A peer is let in exactly when one rule matches it, and a
refusal names every rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import hvsock
from hvsock._server.peers import Peer, PrivilegedCid, allow_rules, check_reachable, refused_by

CIDS = st.integers(0, 8)
RULES = st.one_of(
    CIDS,
    CIDS.map(PrivilegedCid),
    st.sampled_from(["127.0.0.1", "::1", "10.0.0.7"]),
    st.integers(0, 3).map(lambda uid: f"uid:{uid}"),
)
PEERS = st.one_of(
    st.builds(
        lambda cid, port: Peer(f"vsock://{cid}:{port}", cid=cid, port=port),
        CIDS,
        st.integers(1, 70000),
    ),
    st.sampled_from(["127.0.0.1", "10.0.0.7", "192.0.2.1"]).map(
        lambda host: Peer(f"tcp://{host}:5", host=host)
    ),
    st.integers(0, 3).map(lambda uid: Peer("unix:///s", uid=uid)),
)


@given(st.frozensets(RULES, min_size=1, max_size=5), PEERS)
def test_a_peer_is_let_in_exactly_when_a_rule_matches_it(
    rules: frozenset[object], peer: Peer
) -> None:
    checked = allow_rules(rules)
    assert checked is not None
    why = refused_by(checked, peer)
    if any(peer.matches(rule) for rule in checked):
        assert why is None
    else:
        assert why is not None
        assert str(peer) in why
        for rule in checked:
            assert str(rule) in why


@given(PEERS)
def test_no_rules_lets_everyone_in(peer: Peer) -> None:
    assert refused_by(None, peer) is None


def test_two_rules_neither_of_which_matches_refuse() -> None:
    peer = Peer("vsock://3:2000", cid=3, port=2000)
    why = refused_by(frozenset({2, PrivilegedCid(3)}), peer)
    assert why is not None
    assert "source port <= 1023" in why  # what the privileged rule needs, said


def test_rules_that_can_never_match_the_address_are_refused_when_added() -> None:
    address = hvsock.parse_address("tcp://127.0.0.1:5")
    with pytest.raises(hvsock.ArgumentError, match="can never match a peer on tcp"):
        check_reachable(frozenset({2, "uid:0"}), address, "'x''s")
    check_reachable(frozenset({2, "127.0.0.1"}), address, "'x''s")  # one fits: fine
    check_reachable(None, address, "'x''s")
