"""Protected signaling through real parts: a topic secret hides the room name from the
signaling server and seals every signal; peers without it never meet the others.

A tapping relay (``signaling_tap.Tap``) stands between the peers and the server: it records
every frame the server sees, and plays the malicious server by replaying or redirecting them.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import contents, wait_equal
from schemas import PEER_SCHEMA
from signaling_tap import Tap
from websockets.asyncio.client import connect

import p2pdb
from p2pdb.errors import PeerError, ValidationError
from p2pdb.plugins.replication_webrtc import (
    ConnectionHandler,
    aiortc_connection_handler,
    replicate_webrtc,
)
from p2pdb.plugins.replication_webrtc.signal_crypto import (
    ROOM_PREFIX,
    SEALED_TYPE,
    DropLog,
    SignalSealer,
    TopicSecret,
    derive_signal_keys,
)
from p2pdb.plugins.replication_webrtc.signaling_client import SignalingAccess, SignalingClient
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

TOPIC = "secret-topic-of-the-test"
SECRET = "correct horse battery staple"
WAIT = 15.0
PLAINTEXT_MARKS = ("v=0", "a=fingerprint", "candidate:", "a=ice-ufrag", TOPIC)

HandlerFor = Callable[..., Any]


class LogWaiter(logging.Handler):
    """Sets an event when a record of the signaling client's logger contains ``text``."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.WARNING)
        self.text = text
        self.seen = asyncio.Event()
        self.logger = logging.getLogger("p2pdb.webrtc.signaling_client")

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()

    async def wait(self, within: float = WAIT) -> None:
        async with asyncio.timeout(within):
            await self.seen.wait()

    def __enter__(self) -> LogWaiter:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


@pytest.fixture
async def handlers() -> AsyncIterator[HandlerFor]:
    made: list[ConnectionHandler] = []

    async def make(url: str, secret: Any = SECRET, topic: str = TOPIC) -> ConnectionHandler:
        factory = aiortc_connection_handler(
            url, ice_servers=[], host_addresses=["127.0.0.1"], secret=secret
        )
        handler = await factory(topic)
        made.append(handler)
        return handler

    yield make
    for handler in made:
        await handler.close()


def signal_frames(tap: Tap, direction: str = "up") -> list[dict[str, Any]]:
    frames = [json.loads(text) for way, text in tap.frames if way == direction]
    return [f for f in frames if isinstance(f, dict) and f.get("type") == "signal"]


async def test_two_peers_with_the_secret_replicate_and_the_server_sees_no_plaintext(
    tmp_path: Path, signaling: SignalingServer
) -> None:
    async with Tap(signaling.url) as tap:
        opened: list[tuple[p2pdb.Database, Any]] = []
        try:
            collections = []
            for name in ("a", "b"):
                db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
                todos = await db.add_collection("todos", schema=PEER_SCHEMA)
                handler = aiortc_connection_handler(
                    tap.url, ice_servers=[], host_addresses=["127.0.0.1"], secret=SECRET
                )
                pool = await replicate_webrtc(todos, TOPIC, handler)
                opened.append((db, pool))
                collections.append(todos)
                await todos.insert({"id": f"from-{name}", "text": f"written by {name}"})
            await wait_equal(*collections, seconds=WAIT)
            assert set(await contents(collections[0])) == {"from-a", "from-b"}
            rooms = signaling.rooms()
        finally:
            for db, pool in opened:
                await pool.cancel()
                await db.close()
    hashed = derive_signal_keys(SECRET, TOPIC).room
    assert list(rooms) == [hashed] and len(rooms[hashed]) == 2 and hashed.startswith(ROOM_PREFIX)
    signals = signal_frames(tap)
    assert len(signals) >= 2  # at least an offer and an answer crossed the server
    assert all(s["room"] == hashed and s["data"]["type"] == SEALED_TYPE for s in signals)
    everything = tap.seen()
    for mark in PLAINTEXT_MARKS:
        assert mark not in everything, f"{mark!r} crossed the signaling server in clear"


async def test_a_peer_with_the_wrong_secret_sees_no_sdp_and_never_connects(
    signaling: SignalingServer, handlers: HandlerFor
) -> None:
    async with Tap(signaling.url) as wrong_tap, Tap(signaling.url) as plain_tap:
        wrong = await handlers(wrong_tap.url, secret="not the secret, but long enough")
        plain = await handlers(plain_tap.url, secret=None)
        a = await handlers(signaling.url)
        b = await handlers(signaling.url)
        connected = asyncio.Event()
        a.connects.subscribe(lambda _peer: connected.set())
        async with asyncio.timeout(WAIT):
            await connected.wait()  # the pair with the secret met
        assert len(a.peers) == 1 and a.peers[0].peer_id == b.own_peer_id
        assert wrong.peers == [] and plain.peers == [] and wrong.links == [] and plain.links == []
        # Three rooms, one member each but the secret pair: nobody was introduced across.
        members = sorted(len(ids) for ids in signaling.rooms().values())
        assert members == [1, 1, 2]
        for tap in (wrong_tap, plain_tap):
            assert signal_frames(tap, "down") == []
            assert "v=0" not in tap.seen("down")


async def test_an_intruder_in_the_hashed_room_gets_only_sealed_frames_and_is_ignored(
    signaling: SignalingServer, handlers: HandlerFor
) -> None:
    for _ in range(30):  # an id in the lower half, so that the intruder's can be above it
        a = await handlers(signaling.url)
        a_id = a.own_peer_id
        assert a_id is not None
        if a_id < "n":
            break
        await a.close()
    hashed = derive_signal_keys(SECRET, TOPIC).room
    assert list(signaling.rooms()) == [hashed]  # all the intruder can learn from the server
    # The intruder reconnects until its id makes `a` the initiator (a sends it an offer).
    for _ in range(40):
        socket = await connect(signaling.url)
        own = json.loads(await socket.recv())["yourPeerId"]
        if own > a_id:
            break
        await socket.close()
    else:
        pytest.fail("no peer id above a's in 40 tries")
    with LogWaiter("[WEBRTC_SIGNAL_UNAUTHENTICATED]") as dropped:
        await socket.send(json.dumps({"type": "join", "room": hashed}))
        async with asyncio.timeout(WAIT):
            while True:
                frame = json.loads(await socket.recv())
                if frame["type"] == "signal":
                    break
        assert frame["data"]["type"] == SEALED_TYPE
        assert not any(mark in json.dumps(frame) for mark in PLAINTEXT_MARKS)
        # It answers with a plaintext answer and with a's own sealed frame sent back.
        forged = {"type": "signal", "room": hashed, "senderPeerId": own, "receiverPeerId": a_id}
        await socket.send(json.dumps({**forged, "data": {"type": "answer", "sdp": "v=0"}}))
        await socket.send(json.dumps({**forged, "data": frame["data"]}))
        await dropped.wait()
        # `a` is unharmed: a peer with the secret still connects to it.
        a_connected = asyncio.Event()
        a.connects.subscribe(lambda _peer: a_connected.set())
        b = await handlers(signaling.url)
        async with asyncio.timeout(WAIT):
            await a_connected.wait()
        assert [peer.peer_id for peer in a.peers] == [b.own_peer_id]
    await socket.close()


async def test_replayed_and_redirected_frames_are_dropped(
    signaling: SignalingServer, handlers: HandlerFor
) -> None:
    # c: a member with the secret (a bare signaling client) that only watches.
    c_signals: list[dict[str, Any]] = []
    c = SignalingClient(
        signaling.url, TOPIC, on_signal=c_signals.append, access=SignalingAccess(secret=SECRET)
    )
    c.start()
    redirected: list[str] = []
    try:
        async with asyncio.timeout(WAIT):
            await c.wait_joined()
        c_id = c.own_peer_id
        assert c_id is not None

        def replay_and_redirect(direction: str, text: str) -> list[str]:
            frame = json.loads(text)
            if direction != "up" or frame.get("type") != "signal":
                return [text]
            if frame["receiverPeerId"] == c_id:
                return [text]
            copy = json.dumps({**frame, "receiverPeerId": c_id})
            redirected.append(copy)
            return [text, text, copy]  # the original, a replay, and one redirected to c

        with (
            LogWaiter("[WEBRTC_SIGNAL_UNAUTHENTICATED]") as redirect_dropped,
            LogWaiter("[WEBRTC_SIGNAL_REPLAYED]") as replay_dropped,
        ):
            async with Tap(signaling.url, rewrite=replay_and_redirect) as tap:
                a = await handlers(tap.url)
                b = await handlers(signaling.url)
                b_connected = asyncio.Event()
                b.connects.subscribe(lambda _peer: b_connected.set())
                async with asyncio.timeout(WAIT):
                    await b_connected.wait()  # duplicates are dropped; the link still opens
                await redirect_dropped.wait()  # c could not open what was meant for b
                await replay_dropped.wait()  # b saw each of a's frames twice
                assert [peer.peer_id for peer in b.peers] == [a.own_peer_id]
            assert c.drops.counts["WEBRTC_SIGNAL_UNAUTHENTICATED"] >= 1
            assert redirected
            # Nothing redirected was accepted: c only got what a sent to c itself.
            stolen = {json.loads(r)["connectionId"] for r in redirected}
            assert all(s["connectionId"] not in stolen for s in c_signals)
    finally:
        await c.close()


# -- the sealer itself ---------------------------------------------------------------------

KEYS = derive_signal_keys(SECRET, TOPIC)


def sealed(sealer: SignalSealer, now: float = 1000.0, **where: Any) -> dict[str, Any]:
    route = {"sender": "aaaaaaaaaaaa", "receiver": "bbbbbbbbbbbb", "connection_id": "cid"}
    return sealer.seal({"type": "offer", "sdp": "v=0"}, now=now, **{**route, **where})


def open_code(sealer: SignalSealer, data: Any, now: float = 1000.0, **where: Any) -> str:
    route = {"sender": "aaaaaaaaaaaa", "receiver": "bbbbbbbbbbbb", "connection_id": "cid"}
    with pytest.raises(PeerError) as info:
        sealer.open(data, now=now, **{**route, **where})
    return info.value.code


def test_a_sealed_frame_opens_once_on_its_route_only() -> None:
    sender, receiver = SignalSealer(KEYS), SignalSealer(KEYS)
    frame = sealed(sender)
    route = {"sender": "aaaaaaaaaaaa", "receiver": "bbbbbbbbbbbb", "connection_id": "cid"}
    assert receiver.open(frame, now=1000.0, **route) == {"type": "offer", "sdp": "v=0"}
    assert open_code(receiver, frame) == "WEBRTC_SIGNAL_REPLAYED"
    fresh = sealed(sender)
    unauth = "WEBRTC_SIGNAL_UNAUTHENTICATED"
    assert open_code(receiver, fresh, receiver="cccccccccccc") == unauth  # another peer
    assert open_code(receiver, fresh, sender="cccccccccccc") == unauth
    assert open_code(receiver, fresh, connection_id="other") == unauth
    other_room = SignalSealer(derive_signal_keys(SECRET, "another-topic"))
    assert open_code(other_room, fresh) == unauth  # same secret, another room
    wrong_secret = SignalSealer(derive_signal_keys("the wrong secret, long enough", TOPIC))
    assert open_code(wrong_secret, fresh) == unauth
    assert open_code(receiver, {**fresh, "ts": fresh["ts"] + 1}) == unauth  # ts is authenticated
    assert open_code(receiver, {**fresh, "box": fresh["box"][:-4] + "AAAA"}) == unauth
    assert open_code(receiver, {**fresh, "nonce": "!!"}) == unauth
    assert open_code(receiver, {"type": "offer", "sdp": "v=0"}) == unauth
    assert open_code(receiver, "text") == unauth
    # The route was never consumed by the failures: the fresh frame still opens.
    assert receiver.open(fresh, now=1000.0, **route)["type"] == "offer"


def test_stale_and_future_frames_are_refused() -> None:
    sealer = SignalSealer(KEYS, window=60.0)
    assert open_code(sealer, sealed(sealer, now=1000.0), now=1061.0) == "WEBRTC_SIGNAL_STALE"
    assert open_code(sealer, sealed(sealer, now=1061.0), now=1000.0) == "WEBRTC_SIGNAL_STALE"
    route = {"sender": "aaaaaaaaaaaa", "receiver": "bbbbbbbbbbbb", "connection_id": "cid"}
    assert sealer.open(sealed(sealer, now=1000.0), now=1059.0, **route)


def test_replay_memory_is_bounded_and_never_readmits_a_forgotten_frame() -> None:
    sealer = SignalSealer(KEYS, max_remembered=8)
    route = {"sender": "aaaaaaaaaaaa", "receiver": "bbbbbbbbbbbb", "connection_id": "cid"}
    frames = [sealed(sealer, now=1000.0 + i / 1000) for i in range(20)]
    for frame in frames:
        sealer.open(frame, now=1001.0, **route)
    assert sealer.remembered <= 8
    refused = {"WEBRTC_SIGNAL_REPLAYED", "WEBRTC_SIGNAL_STALE"}
    for frame in frames:  # remembered ones are replays, forgotten ones are too old now
        assert open_code(sealer, frame, now=1001.0) in refused
    # Frames older than the window are forgotten without raising the floor.
    late = sealed(sealer, now=1100.0)
    assert sealer.open(late, now=1100.0, **route)
    assert sealer.remembered == 1


def test_drop_log_rate_limits_warnings(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("p2pdb.test.droplog")
    caplog.set_level(logging.WARNING, logger.name)
    log = DropLog(logger, interval=60.0)
    for _ in range(1000):
        log.report(PeerError("bad frame", code="WEBRTC_SIGNAL_UNAUTHENTICATED"))
    log.report(PeerError("old frame", code="WEBRTC_SIGNAL_STALE"))
    assert log.counts == {"WEBRTC_SIGNAL_UNAUTHENTICATED": 1000, "WEBRTC_SIGNAL_STALE": 1}
    assert len(caplog.records) == 2  # one per code within the interval


def test_empty_short_or_odd_secrets_are_refused() -> None:
    for bad in ("", b"", 42, "short secret"):
        with pytest.raises(ValidationError) as info:
            aiortc_connection_handler("ws://127.0.0.1:1", secret=bad)  # type: ignore[arg-type]
        assert info.value.code == "WEBRTC_SECRET_INVALID"
    with pytest.raises(ValidationError) as info:
        TopicSecret("a long enough secret value", kdf="bcrypt")  # type: ignore[arg-type]
    assert info.value.code == "WEBRTC_SECRET_INVALID"
    aiortc_connection_handler("ws://127.0.0.1:1", secret=TopicSecret("short", kdf="scrypt"))
    assert "correct horse" not in repr(SignalingAccess(secret=SECRET))
    assert "correct horse" not in repr(KEYS)


async def test_a_typed_password_with_scrypt(
    signaling: SignalingServer, handlers: HandlerFor
) -> None:
    password = TopicSecret("hunter2", kdf="scrypt")
    slow = derive_signal_keys(password, TOPIC)
    assert slow.room != derive_signal_keys(TopicSecret("hunter2" * 3), TOPIC).room
    a = await handlers(signaling.url, secret=password)
    b = await handlers(signaling.url, secret=TopicSecret("hunter2", kdf="scrypt"))
    connected = asyncio.Event()
    a.connects.subscribe(lambda _peer: connected.set())
    async with asyncio.timeout(WAIT):
        await connected.wait()
    assert [peer.peer_id for peer in a.peers] == [b.own_peer_id]
    assert list(signaling.rooms()) == [slow.room]
