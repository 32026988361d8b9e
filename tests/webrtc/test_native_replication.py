"""The native engine (libdatachannel) with real parts: native <-> native, native <-> aiortc in
every role (WebRTC initiator or responder, replication master or fork), the p2pdb handshake
over native connections, and a native peer process killed mid-sync that resumes.

Real parts throughout: SQLite files, the signaling server over WebSockets on 127.0.0.1,
libdatachannel and aiortc connections on loopback, an OS process for the killed peer.
Needs ``aiolibdatachannel`` (Python >= 3.12): skipped where it is not installed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiolibdatachannel")

from peer_process import DOCS_SCHEMA, ChildPeer, make_docs  # noqa: E402
from replication_helpers import contents, wait_equal  # noqa: E402
from webrtc_helpers import HandlerMaker  # noqa: E402

import p2pdb  # noqa: E402
from p2pdb.errors import PeerError  # noqa: E402
from p2pdb.plugins.replication_webrtc import (  # noqa: E402
    ConnectionHandler,
    ReplicationPool,
    aiortc_connection_handler,
    is_master,
    replicate_webrtc,
)
from p2pdb.plugins.replication_webrtc.native_engine import ENGINE_ENVIRONMENT_VARIABLE  # noqa: E402
from p2pdb.plugins.replication_webrtc.native_link import NativeEngine  # noqa: E402
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer  # noqa: E402

TOPIC = "p2pdb-native-room"
WAIT = 30.0


class Side:
    """One in-process peer: database, collection, pool, and its handler."""

    def __init__(self, db: p2pdb.Database, docs: p2pdb.Collection) -> None:
        self.db, self.docs = db, docs
        self.pool: ReplicationPool | None = None
        self.handler: ConnectionHandler | None = None

    async def join(self, url: str, engine: str, accept: Callable[[str], bool]) -> None:
        """Join with ``engine``; re-join (new signaling id) until ``accept(own id)``."""
        factory = aiortc_connection_handler(
            url, ice_servers=[], host_addresses=["127.0.0.1"], engine=engine
        )

        async def chosen(topic: str) -> ConnectionHandler:
            for _ in range(40):  # each try is a coin flip: 2**-40 to fail
                handler = await factory(topic)
                own = handler.own_peer_id
                if own is not None and accept(own):
                    self.handler = handler
                    return handler
                await handler.close()
            raise AssertionError("no acceptable signaling id in 40 tries")

        self.pool = await replicate_webrtc(self.docs, TOPIC, chosen)

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.cancel()
        await self.db.close()


@pytest.fixture
async def sides(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    made: list[Side] = []

    async def make(name: str, master_of: Side | None = None, fork_of: Side | None = None) -> Side:
        for attempt in range(64):
            db = await p2pdb.create_database(str(tmp_path / f"{name}-{attempt}.db"))
            other = master_of or fork_of
            if other is None or is_master(db.token, other.db.token) == (master_of is not None):
                docs = await db.add_collection("docs", schema=DOCS_SCHEMA)
                side = Side(db, docs)
                made.append(side)
                return side
            await db.close()
        raise AssertionError("no database with the wanted election result in 64 tries")

    yield make
    for side in made:
        await side.close()


def own_id(side: Side) -> str:
    assert side.handler is not None and side.handler.own_peer_id is not None
    return side.handler.own_peer_id


async def exercise(a: Side, b: Side) -> None:
    """Documents both ways (one large enough to be chunked), updates, deletes; and check the
    handshake proved both keys over this very connection."""
    await a.docs.bulk_insert(make_docs("a-", 300, size=900))
    await b.docs.bulk_insert(make_docs("b-", 300, size=900))
    await a.docs.insert({"id": "big", "text": "é" * 150_000, "n": 1})  # > 2 frames of 60 KiB
    await wait_equal(a.docs, b.docs, seconds=WAIT)
    assert len(await contents(a.docs)) == 601
    doc = await b.docs.find_one("big")
    assert doc is not None and doc.to_dict()["text"] == "é" * 150_000
    await (await a.docs.find_one("b-000001")).patch({"text": "edited on a"})
    await (await b.docs.find_one("a-000002")).remove()
    await wait_equal(a.docs, b.docs, seconds=WAIT)
    assert (await contents(b.docs))["b-000001"]["text"] == "edited on a"
    assert "a-000002" not in await contents(a.docs)
    for here, there in ((a, b), (b, a)):
        assert here.pool is not None
        sessions = list(here.pool.sessions.values())
        assert len(sessions) == 1
        assert sessions[0].peer.public_key == there.db.identity.public_key


def links(side: Side) -> list[Any]:
    assert side.handler is not None
    return side.handler.links


async def test_native_to_native_replicates_authenticated(
    signaling: SignalingServer, sides: Callable[..., Any]
) -> None:
    a = await sides("a")
    b = await sides("b")
    await a.join(signaling.url, "native", lambda _id: True)
    await b.join(signaling.url, "native", lambda _id: True)
    await exercise(a, b)
    engines = [link.engine for link in links(a) + links(b)]
    assert all(isinstance(engine, NativeEngine) for engine in engines)
    setups = sorted(
        line
        for engine in engines
        if isinstance(engine, NativeEngine) and engine.native is not None
        for line in (engine.native.local_description or "").split("\r\n")
        if line.startswith("a=setup:")
    )
    assert setups == ["a=setup:actpass", "a=setup:passive"]  # the offer, and our answer
    assert links(a)[0].dtls_fingerprints() == tuple(reversed(links(b)[0].dtls_fingerprints()))


@pytest.mark.parametrize("native_initiates", [True, False], ids=["native-offers", "native-answers"])
@pytest.mark.parametrize("native_is_master", [True, False], ids=["native-master", "native-fork"])
async def test_native_and_aiortc_replicate_in_every_role(
    signaling: SignalingServer,
    sides: Callable[..., Any],
    native_initiates: bool,
    native_is_master: bool,
) -> None:
    native = await sides("native")
    aiortc = await sides("aiortc", **{"fork_of" if native_is_master else "master_of": native})
    assert is_master(native.db.token, aiortc.db.token) == native_is_master
    # an id from the middle of the alphabet, so that the other side's coin flips below are
    # fair (after a native id "z...", an aiortc id above it would come 1 time in 26)
    await native.join(signaling.url, "native", lambda own: "i" <= own[0] <= "r")
    # the initiator is the side whose remote id is greater
    native_id = own_id(native)
    await aiortc.join(signaling.url, "aiortc", lambda own: (own > native_id) == native_initiates)
    await exercise(native, aiortc)
    (link,) = links(native)
    engine = link.engine
    assert isinstance(engine, NativeEngine) and link.initiator == native_initiates
    assert type(links(aiortc)[0].engine).__name__ == "AiortcEngine"
    # an answering native side is the DTLS server (sdp.answer_as_dtls_server)
    local = engine.native.local_description if engine.native is not None else None
    assert local is not None and ("a=setup:passive" in local) == (not native_initiates)
    assert link.dtls_fingerprints() == tuple(reversed(links(aiortc)[0].dtls_fingerprints()))


async def test_a_killed_native_peer_is_dropped_and_resumes(
    tmp_path: Path,
    signaling: SignalingServer,
    sides: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A native child process pulling 3000 documents from an aiortc peer is killed with
    SIGKILL: the aiortc side drops it (heartbeat), and a restart on the same file resumes."""
    master = await sides("master")
    await master.docs.bulk_insert(make_docs("doc-", 3000, size=300))
    await master.join(signaling.url, "aiortc", lambda _id: True)
    for attempt in range(64):
        path = tmp_path / f"child-{attempt}.db"
        async with p2pdb.create_database(str(path)) as probe:
            token = probe.token
        if not is_master(token, master.db.token):
            break
    monkeypatch.setenv(ENGINE_ENVIRONMENT_VARIABLE, "native")  # the child's engine
    args = ("--progress-step", "200")
    child = await ChildPeer.start(path, signaling.url, TOPIC, tmp_path / "c1.log", *args)
    try:
        await child.expect("progress", lambda e: e["count"] >= 1000, within=60)
        assert master.pool is not None
        assert len(master.pool.sessions) == 1
        await child.kill()
        killed_at = time.monotonic()
        async with asyncio.timeout(15):
            while master.pool.sessions:
                await master.pool.wait_for_change()
        print(f"killed native peer dropped after {time.monotonic() - killed_at:.2f} s")
        child = await ChildPeer.start(path, signaling.url, TOPIC, tmp_path / "c2.log", *args)
        await child.request("wait_count", "reached", count=3000, within=60)
        stats = await child.request("stats", "stats")
        pulled = stats["pulled"].get(master.db.token, 0)
        assert pulled < 3000 - 500, stats  # resumed from its checkpoint, not from scratch
        await child.quit()
    finally:
        await child.kill()
    async with p2pdb.create_database(str(path)) as restarted:
        docs = await restarted.add_collection("docs", schema=DOCS_SCHEMA)
        assert await contents(docs) == await contents(master.docs)


async def test_local_names_are_resolved_before_libdatachannel_sees_them() -> None:
    """A browser's ``<uuid>.local`` candidate reaches libdatachannel as the address it
    resolves to (real mDNS on this host, published with aioice); an unresolvable one is
    skipped without holding up the others."""
    import uuid

    from aioice import mdns

    from p2pdb.plugins.replication_webrtc.native_candidates import NativeCandidateAdder

    added: list[tuple[str, str | None]] = []
    arrived = asyncio.Event()

    async def add(text: str, mid: str | None) -> None:
        added.append((text, mid))
        arrived.set()

    name, missing = f"{uuid.uuid4()}.local", f"{uuid.uuid4()}.local"
    publisher = await mdns.create_mdns_protocol()
    adder = NativeCandidateAdder(add, "remote")
    try:
        await publisher.publish(name, "127.0.0.1")
        await adder.add(f"candidate:1 1 UDP 2122260223 {missing} 5000 typ host", "0")
        await adder.add(f"candidate:2 1 UDP 2122260223 {name} 5001 typ host", "0")
        await adder.add("candidate:3 1 UDP 2122260223 192.0.2.7 5002 typ host", None)
        assert added == [("candidate:3 1 UDP 2122260223 192.0.2.7 5002 typ host", None)]
        async with asyncio.timeout(10):
            while len(added) < 2:
                arrived.clear()
                await arrived.wait()
        assert added[1] == ("candidate:2 1 UDP 2122260223 127.0.0.1 5001 typ host", "0")
    finally:
        await adder.close()
        await publisher.close()
    assert len(added) == 2  # the missing name never resolved, and close() ended its wait


async def test_relay_only_native_and_aiortc_replicate_through_turn(
    tmp_path: Path, signaling: SignalingServer, sides: Callable[..., Any]
) -> None:
    """``relay_only`` maps to libdatachannel's relay transport policy and the TURN server
    with its credentials to libdatachannel's URL form: the native side offers only relay
    candidates, and documents cross coturn (on 127.0.0.1) between the two engines."""
    from turn_helpers import TURN_PASSWORD, TURN_USER, running_turnserver

    with running_turnserver(tmp_path) as turn_url:
        ice = [{"urls": turn_url, "username": TURN_USER, "credential": TURN_PASSWORD}]
        pools: list[ReplicationPool] = []
        try:
            collections = []
            for engine in ("native", "aiortc"):
                side = await sides(engine)
                handler = aiortc_connection_handler(
                    signaling.url, ice_servers=ice, relay_only=True, engine=engine
                )
                pools.append(await replicate_webrtc(side.docs, TOPIC, handler))
                collections.append(side.docs)
            await collections[0].bulk_insert(make_docs("n-", 200, size=500))
            await collections[1].bulk_insert(make_docs("a-", 200, size=500))
            await wait_equal(*collections, seconds=WAIT)
            assert len(await contents(collections[0])) == 400
            (link,) = pools[0].connection.links
            engine = link.engine
            assert isinstance(engine, NativeEngine) and engine.native is not None
            local = engine.native.local_description or ""
            assert " typ relay" in local and " typ host" not in local
        finally:
            for pool in pools:
                await pool.cancel()  # before coturn stops: closing deletes the allocations


async def test_the_receive_backlog_is_bounded() -> None:
    """libdatachannel keeps receiving while the loop is busy: what waits for the loop is
    bounded, and going over the bound cuts the channel off (``overflow``) instead of
    growing without limit or dropping messages silently."""
    import time as clock

    from p2pdb.plugins.replication_webrtc.native_bridge import (
        ChannelEvents,
        NativeChannel,
        NativeConfig,
        NativePeerConnection,
    )
    from p2pdb.plugins.replication_webrtc.native_engine import load_native
    from p2pdb.plugins.replication_webrtc.native_link import filter_host_candidates

    core, limit, frame = load_native(), 256 * 1024, "x" * 60_000
    received: list[int] = []
    overflow: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    opened = asyncio.Event()
    channels: list[NativeChannel] = []

    def receive(channel: NativeChannel) -> None:
        channels.append(channel)
        events = ChannelEvents(
            opened.set, lambda m: received.append(len(m)), lambda: None, lambda: None,
            overflow.set_result,
        )  # fmt: skip
        channel.listen(events, limit)

    sender = NativePeerConnection(core, NativeConfig(), on_state=print, on_channel=print)
    receiver = NativePeerConnection(core, NativeConfig(), on_state=print, on_channel=receive)
    try:
        out = sender.create_channel("bounded")
        out.listen(ChannelEvents(opened.set, print, print, print, print), limit)
        offer = filter_host_candidates(await sender.describe("offer"), ["127.0.0.1"])
        await receiver.set_remote(offer, "offer")
        answer = filter_host_candidates(await receiver.describe("answer"), ["127.0.0.1"])
        await sender.set_remote(answer, "answer")
        async with asyncio.timeout(WAIT):
            while not (channels and out.readyState == "open"):
                opened.clear()
                await opened.wait()
        for _ in range(40):  # 2.4 MB, ten times the limit, queued in libdatachannel
            out.send(frame)
        # keep the loop busy (as a long write would) while libdatachannel delivers
        deadline = clock.monotonic() + WAIT
        while not channels[0].receive_overflowed and clock.monotonic() < deadline:
            clock.sleep(0.01)  # noqa: ASYNC251 - blocking the loop is the point here
        assert channels[0].receive_overflowed
        async with asyncio.timeout(WAIT):
            size = await overflow
        assert size > limit
        assert sum(received) <= limit  # nothing past the cut was delivered
    finally:
        await sender.close()
        await receiver.close()


async def test_a_send_on_a_channel_the_remote_closed_is_the_peer_leaving(
    make_handler: HandlerMaker,
) -> None:
    """libdatachannel closes a channel in its own threads and tells the loop later; a send
    in between finds it closed (or has its frame refused: ``rtcSendMessage`` -2). That is
    the peer leaving, as on aiortc (whose channel state and ``close`` event change together,
    so the link has ended before a send can see the state): the link ends at the send and
    announces the disconnect before the send's ``WEBRTC_PEER_GONE`` comes back, so a
    session stops before that error reaches its replication, and nothing is reported."""
    a_handler, a = await make_handler(engine="native")
    b_handler, b = await make_handler(engine="native")
    peer_b, peer_a = await a.connect(), await b.connect()
    link_a, link_b = a_handler.link_to(peer_b), b_handler.link_to(peer_a)
    assert link_a is not None and link_b is not None
    engine_a, engine_b = link_a.engine, link_b.engine
    assert isinstance(engine_a, NativeEngine) and isinstance(engine_b, NativeEngine)
    ours, theirs = engine_a.native_channel, engine_b.native_channel
    assert ours is not None and theirs is not None and ours.readyState == "open"
    await a_handler.send(peer_b, {"before": True})
    assert (await b.message()).data == {"before": True}
    theirs.close()  # the remote closes its end: libdatachannel resets the stream
    # keep the loop from running the "closed" event while libdatachannel closes our end
    deadline = time.monotonic() + WAIT
    while ours.readyState != "closed" and time.monotonic() < deadline:
        time.sleep(0.005)  # noqa: ASYNC251 - the loop must not run here: that is the point
    assert ours.readyState == "closed" and not link_a.ended
    with pytest.raises(PeerError) as caught:
        await a_handler.send(peer_b, {"after": True})
    assert caught.value.code == "WEBRTC_PEER_GONE"
    assert link_a.ended  # ended by the send itself, not by the event still queued
    assert a.disconnects.get_nowait() == peer_b  # announced before the error came back
    assert a_handler.peers == []
    async with asyncio.timeout(WAIT):  # the queued "closed" event runs: it changes nothing
        await link_a.wait_closed()
    assert a.errors.empty() and a.disconnects.empty()
