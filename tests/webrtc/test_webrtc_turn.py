"""Relay-only connections through a real TURN server (coturn) on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from turn_helpers import TURN_PASSWORD, TURN_USER, running_turnserver
from webrtc_helpers import HandlerMaker

from p2pdb.plugins.replication_webrtc.aiortc_engine import AiortcEngine


@pytest.fixture
def turn_server(tmp_path: Path) -> Iterator[str]:
    """coturn on a free loopback port (see turn_helpers); stopped by PID at the end."""
    with running_turnserver(tmp_path) as url:
        yield url


async def test_relay_only_handlers_connect_through_turn(
    turn_server: str, make_handler: HandlerMaker
) -> None:
    # turn_server comes first so that it is stopped last, after the handlers closed:
    # closing deletes the TURN allocations, which needs the server.
    ice = [{"urls": turn_server, "username": TURN_USER, "credential": TURN_PASSWORD}]
    # No host_addresses override: relay-only gathering uses no host candidates at all.
    a, events_a = await make_handler(ice_servers=ice, relay_only=True, host_addresses=None)
    b, events_b = await make_handler(ice_servers=ice, relay_only=True, host_addresses=None)
    peer_b, peer_a = await events_a.connect(), await events_b.connect()
    assert a.candidate_pair(peer_b) == ("relay", "relay")
    assert b.candidate_pair(peer_a) == ("relay", "relay")
    for handler, peer in ((a, peer_b), (b, peer_a)):  # no host candidate was even offered
        link = handler.link_to(peer)  # the test inspects the SDP sent
        engine = link.engine if link is not None else None
        assert isinstance(engine, AiortcEngine)
        pc = engine.pc
        assert pc is not None and pc.localDescription is not None
        candidates = [
            line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate")
        ]
        assert candidates and all(" typ relay" in line for line in candidates)
    await a.send(peer_b, {"via": "turn", "payload": "ü" * 100_000})
    assert (await events_b.message()).data == {"via": "turn", "payload": "ü" * 100_000}
    await b.send(peer_a, ["back"])
    assert (await events_a.message()).data == ["back"]
