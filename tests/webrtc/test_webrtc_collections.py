"""Several collections of one database in one topic share one peer connection per remote
database (multiplex.py), through real parts: a signaling server over WebSockets, real
peer connections on loopback (aiortc, or libdatachannel with P2PDB_WEBRTC_ENGINE=native),
real SQLite files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import contents, wait_equal
from schemas import PEER_SCHEMA

import p2pdb
from p2pdb.plugins.replication_webrtc import ReplicationPool, replicate_webrtc
from p2pdb.plugins.replication_webrtc.channels import HELD_MESSAGES
from p2pdb.plugins.replication_webrtc.handler_factory import aiortc_connection_handler
from p2pdb.plugins.replication_webrtc.link import Link
from p2pdb.plugins.replication_webrtc.multiplex import MAX_CHANNELS, MAX_HELD
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

TOPIC = "p2pdb-two-collections"
NAMES = ("todos", "notes")


@dataclass
class Side:
    """One database replicating some collections in TOPIC through one factory."""

    db: p2pdb.Database
    factory: Any
    collections: dict[str, p2pdb.Collection] = field(default_factory=dict)
    pools: dict[str, ReplicationPool] = field(default_factory=dict)
    errors: list[Exception] = field(default_factory=list)
    errored: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, error: Exception) -> None:
        self.errors.append(error)
        self.errored.set()

    async def error_where(self, check: Callable[[Any], bool], seconds: float = 10) -> None:
        """Wait until an error on one of the pools passes ``check``."""
        async with asyncio.timeout(seconds):
            while not any(check(e) for e in self.errors):
                self.errored.clear()
                await self.errored.wait()

    async def replicate(self, name: str, **options: Any) -> ReplicationPool:
        if name not in self.collections:
            self.collections[name] = await self.db.add_collection(name, schema=PEER_SCHEMA)
        pool = await replicate_webrtc(self.collections[name], TOPIC, self.factory, **options)
        pool.errors.subscribe(self.note)
        self.pools[name] = pool
        return pool

    def handler(self) -> Any:
        return next(iter(self.pools.values())).connection.handler


MakeSide = Callable[..., Any]


@pytest.fixture
async def make_side(tmp_path: Path, signaling: SignalingServer) -> AsyncIterator[MakeSide]:
    opened: list[Side] = []

    async def make(name: str, *collections: str) -> Side:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
        factory = aiortc_connection_handler(
            signaling.url, ice_servers=[], host_addresses=["127.0.0.1"]
        )
        side = Side(db, factory)
        opened.append(side)
        for collection in collections:
            await side.replicate(collection)
        return side

    yield make
    for side in opened:
        await side.db.close()  # cancels its pools


def peer_connection(link: Link | None) -> object:
    """The engine's peer connection object (aiortc's RTCPeerConnection, or native)."""
    assert link is not None
    engine: Any = link.engine
    pc = getattr(engine, "pc", None) or getattr(engine, "native", None)
    assert pc is not None
    return pc


async def connected(pool: ReplicationPool, seconds: float = 20.0) -> Any:
    async with asyncio.timeout(seconds):
        return await pool.wait_for_first_peer()


async def fill(collection: p2pdb.Collection, prefix: str, count: int) -> None:
    await collection.bulk_insert(
        [{"id": f"{prefix}{i:04d}", "text": prefix, "n": i} for i in range(count)]
    )


def ids(documents: dict[str, Any]) -> set[str]:
    return set(documents)


async def test_two_collections_share_one_peer_connection_and_replicate_independently(
    make_side: MakeSide, signaling: SignalingServer
) -> None:
    a = await make_side("a", *NAMES)
    b = await make_side("b", *NAMES)
    peers_a = {name: await connected(a.pools[name]) for name in NAMES}
    peers_b = {name: await connected(b.pools[name]) for name in NAMES}
    # one handler, one signaling membership, one peer connection per database
    assert a.pools["todos"].connection.handler is a.pools["notes"].connection.handler
    assert len(signaling.rooms()[TOPIC]) == 2
    pcs_a = {peer_connection(a.pools[n].connection.link_to(peers_a[n])) for n in NAMES}
    pcs_b = {peer_connection(b.pools[n].connection.link_to(peers_b[n])) for n in NAMES}
    assert len(pcs_a) == 1 and len(pcs_b) == 1 and pcs_a != pcs_b
    assert len(a.handler().links) == 1 and len(b.handler().links) == 1
    # a channel each: their own labels, their own streams
    labels = {a.pools[n].connection.channel_to(peers_a[n]).label for n in NAMES}  # type: ignore[union-attr]
    assert labels == {"p2pdb/1/todos", "p2pdb/1/notes"}

    await fill(a.collections["todos"], "a-todo-", 150)
    await fill(b.collections["notes"], "b-note-", 120)
    await fill(a.collections["notes"], "a-note-", 30)
    await wait_equal(a.collections["todos"], b.collections["todos"])
    await wait_equal(a.collections["notes"], b.collections["notes"])
    todos = ids(await contents(b.collections["todos"]))
    notes = ids(await contents(a.collections["notes"]))
    assert len(todos) == 150 and all(i.startswith("a-todo-") for i in todos)
    assert len(notes) == 150 and not any(i.startswith("a-todo-") for i in notes)

    # one collection's pool leaves: the other replicates on, over the same connection
    await a.pools["todos"].cancel()
    async with asyncio.timeout(10):
        while b.pools["todos"].sessions:
            await b.pools["todos"].wait_for_change()
    assert b.pools["notes"].sessions and len(b.handler().links) == 1
    await b.collections["notes"].insert({"id": "after-cancel", "text": "still"})
    await b.collections["todos"].insert({"id": "not-replicated", "text": "gone"})
    await wait_equal(a.collections["notes"], b.collections["notes"])
    assert await a.collections["todos"].find_one("not-replicated") is None
    assert peer_connection(b.handler().links[0]) in pcs_b  # the same connection all along

    # the last pool leaves: the connection closes and the database leaves the room
    handler_a = a.handler()
    (link_b,) = b.handler().links
    await a.pools["notes"].cancel()
    assert handler_a.closing and handler_a.links == []
    await asyncio.wait_for(link_b.wait_closed(), 10)  # b notices, and its link goes
    async with asyncio.timeout(10):  # the server has no event for a member leaving
        while len(signaling.rooms().get(TOPIC, [])) != 1:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert b.handler().links == [] and b.pools["notes"].sessions == {}
    assert not [e for e in a.errors + b.errors if getattr(e, "code", "") != "WEBRTC_PEER_GONE"]


async def test_a_collection_added_later_gets_its_channel_on_the_same_connection(
    make_side: MakeSide,
) -> None:
    a = await make_side("a", "todos")
    b = await make_side("b", "todos")
    await connected(a.pools["todos"])
    await connected(b.pools["todos"])
    (link_a,) = a.handler().links
    await fill(b.collections["todos"], "b-", 20)
    notes_b = await b.replicate("notes")
    await fill(b.collections["notes"], "late-", 40)
    notes_a = await a.replicate("notes")  # the other side too, a moment later
    peer = await connected(notes_a)
    await connected(notes_b)
    assert notes_a.connection.link_to(peer) is link_a  # no second connection
    await wait_equal(a.collections["notes"], b.collections["notes"])
    await wait_equal(a.collections["todos"], b.collections["todos"])
    assert len(await contents(a.collections["notes"])) == 40
    assert not a.errors and not b.errors


async def test_a_dropped_session_closes_its_channel_only_and_comes_back(
    make_side: MakeSide,
) -> None:
    a = await make_side("a", *NAMES)
    b = await make_side("b", *NAMES)
    peer_todos = await connected(a.pools["todos"])
    await connected(a.pools["notes"])
    await connected(b.pools["todos"])
    notes_session = next(iter(a.pools["notes"].sessions.values()))
    link = a.pools["todos"].connection.link_to(peer_todos)
    await a.pools["todos"].connection.disconnect(peer_todos)  # as a heartbeat drop does
    assert peer_todos not in a.pools["todos"].sessions
    # the other collection's session and the connection are untouched
    assert next(iter(a.pools["notes"].sessions.values())) is notes_session
    assert not link.ended  # type: ignore[union-attr]
    await b.collections["notes"].insert({"id": "meanwhile", "text": "notes"})
    await wait_equal(a.collections["notes"], b.collections["notes"])
    # the channel comes back (a new session, the same connection) and replicates
    async with asyncio.timeout(20):
        while not a.pools["todos"].sessions:
            await a.pools["todos"].wait_for_change()
    (new_peer,) = a.pools["todos"].sessions
    assert new_peer != peer_todos and a.pools["todos"].connection.link_to(new_peer) is link
    await b.collections["todos"].insert({"id": "after", "text": "todos"})
    await wait_equal(a.collections["todos"], b.collections["todos"])


async def test_hostile_channels_are_bounded_refused_and_store_nothing(
    make_side: MakeSide,
) -> None:
    victim = await make_side("victim", "todos")
    hostile = await make_side("hostile", "todos")
    peer = await connected(hostile.pools["todos"])
    await connected(victim.pools["todos"])
    link = hostile.pools["todos"].connection.link_to(peer)
    assert link is not None
    (victim_link,) = victim.handler().links
    row = {"newDocumentState": {"id": "smuggled", "text": "x", "_deleted": False}}
    write = {"id": "w1", "method": "masterWrite", "params": [[row]]}

    async def opened(channel: Any) -> None:
        await asyncio.wait_for(channel.open_or_closed.wait(), 10)

    def code(wanted: str) -> Callable[[Any], bool]:
        return lambda error: getattr(error, "code", "") == wanted

    if link.initiator:
        # channels for collections the victim does not replicate: held (bounded), never
        # delivered; a held channel flooded past its bound is refused
        first = link.open_channel("p2pdb/1/secrets")
        await opened(first)
        await link.send_on(first, write)
        for _ in range(MAX_HELD):
            link.open_channel("p2pdb/1/other")  # each replaces the last one of that name
        spam = [link.open_channel(f"p2pdb/1/c{i}") for i in range(MAX_HELD + 2)]
        await opened(spam[-1])
        await victim.error_where(code("WEBRTC_CHANNEL_REFUSED"))
        for i in range(HELD_MESSAGES + 2):
            await link.send_on(first, {"id": f"t{i}", "method": "token", "params": []})
        await victim.error_where(
            lambda e: getattr(e, "parameters", {}).get("limit") == "held_channel"
        )
    else:
        # a responder may open no collection channel at all
        sneaky = link.open_channel("p2pdb/1/todos")
        await victim.error_where(code("WEBRTC_CHANNEL_REFUSED"))
        assert sneaky.label == "p2pdb/1/todos"
    # past MAX_CHANNELS the link ends with a typed error
    if not victim_link.ended:
        for i in range(MAX_CHANNELS + 2):
            if link.ended:
                break
            link.open_channel(f"p2pdb/1/flood{i}")
        await asyncio.wait_for(victim_link.wait_closed(), 20)
    codes = {getattr(e, "code", "") for e in victim.errors}
    assert codes & {"WEBRTC_CHANNEL_REFUSED", "WEBRTC_PEER_OVER_LIMIT"}
    assert await victim.collections["todos"].find_one("smuggled") is None
    assert "secrets" not in victim.collections
