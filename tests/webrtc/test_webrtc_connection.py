"""ConnectionHandler over a real signaling server and real aiortc connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from webrtc_helpers import TOPIC, WAIT, Events, HandlerMaker
from websockets.asyncio.client import ClientConnection, connect

from p2pdb.errors import PeerError, ReplicationError, ValidationError
from p2pdb.plugins.replication_webrtc import (
    Peer,
    aiortc_connection_handler,
    start_signaling_server,
)
from p2pdb.plugins.replication_webrtc.aiortc_engine import AiortcEngine
from p2pdb.plugins.replication_webrtc.ice import host_addresses_override
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer


async def connected_pair(make_handler: HandlerMaker) -> tuple[Events, Peer, Events, Peer]:
    """Two handlers on one topic; returns (a, a's view of b, b, b's view of a)."""
    _, a = await make_handler()
    _, b = await make_handler()
    peer_b, peer_a = await a.connect(), await b.connect()
    return a, peer_b, b, peer_a


async def test_two_handlers_connect_and_exchange_messages(make_handler: HandlerMaker) -> None:
    a, peer_b, b, peer_a = await connected_pair(make_handler)
    assert peer_b.peer_id == b.handler.own_peer_id
    assert peer_a.peer_id == a.handler.own_peer_id
    assert peer_a.connection_id == peer_b.connection_id  # the responder echoes it
    assert peer_a.initiator != peer_b.initiator
    assert peer_b.initiator == (b.handler.own_peer_id > a.handler.own_peer_id)
    assert a.handler.peers == [peer_b] and b.handler.peers == [peer_a]

    for n in range(5):
        await a.handler.send(peer_b, {"id": f"r{n}", "method": "token", "params": []})
    await b.handler.send(peer_a, ["a", "list", "ü😀"])
    for n in range(5):  # in order
        message = await b.message()
        assert message.peer == peer_a and message.data["id"] == f"r{n}"  # type: ignore[call-overload]
    assert (await a.message()).data == ["a", "list", "ü😀"]


async def test_a_5_mb_message_is_chunked_and_does_not_block_small_ones(
    make_handler: HandlerMaker,
) -> None:
    a, peer_b, b, peer_a = await connected_pair(make_handler)
    docs = 6400
    big = {"documents": [{"id": f"d{i}", "text": "x€😀" * 100} for i in range(docs)]}
    assert len(json.dumps(big, ensure_ascii=False).encode()) > 5_000_000
    big_send = asyncio.create_task(a.handler.send(peer_b, big))
    await asyncio.sleep(0.05)
    assert not big_send.done(), "flow control should hold the big message back"
    await a.handler.send(peer_b, {"live": True})  # returns while the big one still queues
    async with asyncio.timeout(30):
        await big_send
    first, second = await b.message(), await b.message()
    assert first.data == {"live": True}  # a live message overtakes the queued megabytes
    assert second.data == big
    await b.handler.send(peer_a, big)  # and the other way
    assert (await a.message(within=30)).data == big


async def test_a_third_handler_connects_to_both(make_handler: HandlerMaker) -> None:
    a, peer_b, b, peer_a = await connected_pair(make_handler)
    _, c = await make_handler()
    c_peers = {(await c.connect()).peer_id, (await c.connect()).peer_id}
    assert c_peers == {a.handler.own_peer_id, b.handler.own_peer_id}
    peer_c_from_a, peer_c_from_b = await a.connect(), await b.connect()
    assert peer_c_from_a.peer_id == peer_c_from_b.peer_id == c.handler.own_peer_id
    await a.handler.send(peer_c_from_a, {"from": "a"})
    await b.handler.send(peer_c_from_b, {"from": "b"})
    got = {(await c.message()).data["from"] for _ in range(2)}  # type: ignore[call-overload]
    assert got == {"a", "b"}


async def test_closing_one_side_disconnects_the_other(make_handler: HandlerMaker) -> None:
    a, peer_b, b, peer_a = await connected_pair(make_handler)
    await b.handler.close()
    assert await a.disconnect() == peer_b
    assert await b.disconnect() == peer_a  # close() also ends its own links
    assert b.completed.is_set()
    with pytest.raises(PeerError) as info:
        await a.handler.send(peer_b, {"x": 1})
    assert info.value.code == "WEBRTC_PEER_GONE"


@pytest.mark.parametrize("side", ["responder", "initiator"])
async def test_initiator_reconnects_after_a_drop(make_handler: HandlerMaker, side: str) -> None:
    a, peer_b, b, peer_a = await connected_pair(make_handler)
    responder, initiator = (a, b) if peer_b.initiator is False else (b, a)
    dropper = responder if side == "responder" else initiator
    await dropper.handler.disconnect(dropper.handler.peers[0])
    old = {await responder.disconnect(), await initiator.disconnect()}
    new_on_responder, new_on_initiator = await responder.connect(), await initiator.connect()
    assert new_on_responder not in old and new_on_initiator not in old
    assert new_on_responder.connection_id == new_on_initiator.connection_id
    assert new_on_responder.connection_id != peer_a.connection_id
    await responder.handler.send(new_on_responder, {"after": "reconnect"})
    assert (await initiator.message()).data == {"after": "reconnect"}
    with pytest.raises(PeerError):
        await a.handler.send(peer_b, {"old": "peer"})


async def test_malformed_frame_reports_an_error_and_drops_the_peer(
    make_handler: HandlerMaker,
) -> None:
    a, peer_b, b, peer_a = await connected_pair(make_handler)
    # Play a hostile peer: write a raw frame on b's data channel.
    link = b.handler.link_to(peer_a)
    engine = link.engine if link is not None else None
    channel = engine.channel if isinstance(engine, AiortcEngine) else None
    assert channel is not None
    channel.send('{"chunk": {"id": "x", "index": 7, "total": 2, "data": ""}}')
    error = await a.error()
    assert isinstance(error, PeerError) and error.code == "WEBRTC_CHUNK_INVALID"
    assert error.parameters["peer_id"] == peer_b.peer_id
    assert await a.disconnect() == peer_b
    assert await b.disconnect() == peer_a


async def test_close_leaves_no_tasks_behind() -> None:
    before = asyncio.all_tasks()
    async with await start_signaling_server(port=0) as server:
        factory = aiortc_connection_handler(
            server.url, ice_servers=[], host_addresses=["127.0.0.1"]
        )
        a, b = await factory(TOPIC), await factory(TOPIC)
        events_a, events_b = Events(a), Events(b)
        peer = await events_a.connect()
        await events_b.connect()
        await a.send(peer, {"x": "y" * 200_000})
        await events_b.message()
        await a.close()
        await b.close()
    left = asyncio.all_tasks() - before
    assert not left, f"tasks left behind: {left}"


async def test_a_close_cancelled_midway_still_lets_a_second_close_return() -> None:
    """The caller of ``close()`` is cancelled while it closes the signaling socket: the
    cancellation reaches the caller, the observables complete, and a second ``close()``
    returns instead of waiting for the first one for ever."""
    async with await start_signaling_server(port=0) as server:
        factory = aiortc_connection_handler(
            server.url, ice_servers=[], host_addresses=["127.0.0.1"]
        )
        handler = await factory(TOPIC)
        completed = asyncio.Event()
        handler.connects.subscribe(on_completed=completed.set)
        closing = asyncio.ensure_future(handler.close())
        await asyncio.sleep(0)  # close() has started and waits on the socket
        assert not closing.done()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert completed.is_set()
        async with asyncio.timeout(WAIT):
            await handler.close()


async def test_unreachable_signaling_server_fails_within_the_timeout() -> None:
    server = await start_signaling_server(port=0)
    url = server.url
    await server.close()  # nothing listens there any more
    factory = aiortc_connection_handler(url, ice_servers=[], connect_timeout=0.5)
    with pytest.raises(ReplicationError) as info:
        await factory(TOPIC)
    assert info.value.code == "WEBRTC_SIGNALING_UNREACHABLE"


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"ice_servers": [{"url": "stun:x"}]}, "WEBRTC_ICE_SERVER_INVALID"),
        ({"ice_servers": [{"urls": "http://x"}]}, "WEBRTC_ICE_SERVER_INVALID"),
        ({"ice_servers": [{"urls": "turn:x", "username": 5}]}, "WEBRTC_ICE_SERVER_INVALID"),
        (
            {"ice_servers": [{"urls": "stun:127.0.0.1"}], "relay_only": True},
            "WEBRTC_ICE_SERVER_INVALID",
        ),
        ({"host_addresses": ["localhost"]}, "WEBRTC_HOST_ADDRESS_INVALID"),
        ({"host_addresses": "127.0.0.1"}, "WEBRTC_HOST_ADDRESS_INVALID"),
        ({"connect_timeout": 0}, "WEBRTC_SETTING_INVALID"),
    ],
)
def test_bad_settings_are_rejected_early(kwargs: dict[str, Any], code: str) -> None:
    with pytest.raises(ValidationError) as info:
        aiortc_connection_handler("ws://127.0.0.1:1", **kwargs)
    assert info.value.code == code


async def test_bad_topic_is_rejected(signaling: SignalingServer) -> None:
    with pytest.raises(ValidationError) as info:
        await aiortc_connection_handler(signaling.url, ice_servers=[])("short")
    assert info.value.code == "WEBRTC_TOPIC_INVALID"


# -- a hand-driven remote peer, to check the wire rules -----------------------------------


class RawPeer:
    """A remote peer driven by the test: a raw signaling socket (+ aiortc when needed)."""

    def __init__(self, socket: ClientConnection, peer_id: str) -> None:
        self.socket = socket
        self.id = peer_id

    async def recv(self) -> dict[str, Any]:
        async with asyncio.timeout(WAIT):
            while True:
                message: dict[str, Any] = json.loads(await self.socket.recv())
                if message["type"] == "signal":
                    return message

    async def signal(self, to: str, data: dict[str, Any], connection_id: str) -> None:
        frame = {
            "type": "signal",
            "room": TOPIC,
            "senderPeerId": self.id,
            "receiverPeerId": to,
            "data": data,
            "connectionId": connection_id,
        }
        await self.socket.send(json.dumps(frame))


@pytest.fixture
async def raw_peer(signaling: SignalingServer) -> AsyncIterator[Any]:
    sockets: list[ClientConnection] = []

    async def open_peer(want_below: str | None = None, want_above: str | None = None) -> RawPeer:
        """Connect until the server gives an id below/above the given one (roles are id-based)."""
        while True:
            socket = await connect(signaling.url)
            sockets.append(socket)
            peer_id = json.loads(await socket.recv())["yourPeerId"]
            if (want_below is None or peer_id < want_below) and (
                want_above is None or peer_id > want_above
            ):
                await socket.send(json.dumps({"type": "join", "room": TOPIC}))
                return RawPeer(socket, peer_id)
            await socket.close()

    yield open_peer
    for socket in sockets:
        await socket.close()


async def test_initiator_offers_first_times_out_and_retries_with_a_new_connection_id(
    make_handler: HandlerMaker, raw_peer: Any
) -> None:
    handler, events = await make_handler(connect_timeout=0.5)
    assert handler.own_peer_id is not None
    silent = await raw_peer(want_above=handler.own_peer_id)  # so the handler initiates
    first = await silent.recv()
    assert first["data"]["type"] == "offer"  # never a candidate before the offer
    assert "a=candidate:" in first["data"]["sdp"] and "127.0.0.1" in first["data"]["sdp"]
    assert first["senderPeerId"] == handler.own_peer_id and first["room"] == TOPIC
    assert len(first["connectionId"]) == 10 and first["connectionId"].isalpha()
    error = await events.error()
    assert isinstance(error, PeerError) and error.code == "WEBRTC_CONNECT_TIMEOUT"
    second = await silent.recv()
    assert second["data"]["type"] == "offer"
    assert second["connectionId"] != first["connectionId"]


@pytest.mark.parametrize("prefix", ["a=candidate:", "candidate:"])
async def test_responder_uses_candidates_trickled_before_the_offer(
    make_handler: HandlerMaker, raw_peer: Any, prefix: str
) -> None:
    """Like RxDB with node-datachannel: the candidate comes first, index null, then the offer.

    The offer carries no candidates, so only the early, buffered candidate can connect.
    """
    handler, events = await make_handler()
    assert handler.own_peer_id is not None
    remote = await raw_peer(want_below=handler.own_peer_id)  # so the remote initiates
    with host_addresses_override(["127.0.0.1"]):
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            channel = pc.createDataChannel("0123456789abcdef0123456789abcdef01234567")
            opened = asyncio.Event()
            channel.on("open", opened.set)
            received: asyncio.Queue[str] = asyncio.Queue()
            channel.on("message", received.put_nowait)
            await pc.setLocalDescription(await pc.createOffer())
            assert pc.localDescription is not None
            sdp_lines = pc.localDescription.sdp.splitlines()
            candidate = next(line for line in sdp_lines if line.startswith("a=candidate:"))
            offer_sdp = (
                "\r\n".join(
                    line
                    for line in sdp_lines
                    if not line.startswith(("a=candidate:", "a=end-of-candidates"))
                )
                + "\r\n"
            )
            cid = "qwertyuiop"
            line = prefix + candidate.removeprefix("a=candidate:")
            trickle = {"candidate": line, "sdpMLineIndex": None, "sdpMid": "0"}
            own = handler.own_peer_id
            await remote.signal(own, {"type": "candidate", "candidate": trickle}, cid)
            await remote.signal(own, {"type": "renegotiate", "renegotiate": True}, cid)
            await remote.signal(own, {"type": "offer", "sdp": offer_sdp}, cid)
            end = {"candidate": "", "sdpMLineIndex": 0, "sdpMid": "0"}
            await remote.signal(own, {"type": "candidate", "candidate": end}, cid)
            answer = await remote.recv()
            assert answer["connectionId"] == cid and answer["data"]["type"] == "answer"
            await pc.setRemoteDescription(RTCSessionDescription(**answer["data"]))
            peer = await events.connect()
            assert peer.peer_id == remote.id and peer.connection_id == cid
            async with asyncio.timeout(WAIT):
                await opened.wait()
            channel.send('{"id":"1","method":"token","params":[]}')
            assert (await events.message()).data == {"id": "1", "method": "token", "params": []}
            await handler.send(peer, {"id": "1", "result": "tok"})
            async with asyncio.timeout(WAIT):
                assert json.loads(await received.get()) == {"id": "1", "result": "tok"}
        finally:
            await pc.close()
    assert await events.disconnect() == peer


async def test_links_survive_a_signaling_outage() -> None:
    server = await start_signaling_server(port=0)
    port = server.port
    factory = aiortc_connection_handler(server.url, ice_servers=[], host_addresses=["127.0.0.1"])
    a, b = await factory(TOPIC), await factory(TOPIC)
    try:
        events_a, events_b = Events(a), Events(b)
        peer_b, peer_a = await events_a.connect(), await events_b.connect()
        old_id_a = a.own_peer_id
        await server.close()
        await a.send(peer_b, {"during": "outage"})
        assert (await events_b.message()).data == {"during": "outage"}
        async with await start_signaling_server(port=port):
            # Both rejoin with new ids, which look like new peers: RxDB then connects
            # once more (the replication pool dedups by storage token), old link intact.
            new_peer_b, new_peer_a = await events_a.connect(), await events_b.connect()
            assert a.own_peer_id not in (None, old_id_a)
            assert new_peer_b.peer_id == b.own_peer_id != peer_b.peer_id
            assert new_peer_a.peer_id == a.own_peer_id
            assert set(a.peers) == {peer_b, new_peer_b}
            await b.send(peer_a, {"old": "link"})
            await b.send(new_peer_a, {"new": "link"})
            assert {str((await events_a.message()).data) for _ in range(2)} == {
                "{'old': 'link'}",
                "{'new': 'link'}",
            }
            assert events_a.disconnects.empty() and events_b.disconnects.empty()
    finally:
        await a.close()
        await b.close()


async def test_a_peer_that_leaves_before_connecting_is_dropped(
    make_handler: HandlerMaker, raw_peer: Any
) -> None:
    handler, events = await make_handler(connect_timeout=5)
    assert handler.own_peer_id is not None
    leaver = await raw_peer(want_above=handler.own_peer_id)  # so the handler initiates
    assert (await leaver.recv())["data"]["type"] == "offer"
    [link] = handler.links  # the pending link to the leaver
    await leaver.socket.close()
    async with asyncio.timeout(WAIT):  # the `joined` without it ends the attempt at once
        await link.wait_closed()
    assert not handler.links and not handler.pending_reconnects
    assert events.errors.empty() and events.connects.empty()
