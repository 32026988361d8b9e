"""A hostile peer against a real p2pdb pool.

The hostile side is a raw ``ConnectionHandler`` (no pool, no database): it speaks the wire
protocol by hand, answers the pool's ``token`` requests with a token it picked to get the
role it wants, and sends whatever it likes, down to raw data-channel frames. The pool is real
(SQLite file, signaling server over WebSockets, aiortc on loopback).

What the design promises and these tests check: every bad message is rejected with a typed
error on ``pool.errors``; the peer is disconnected for protocol violations and invalid data
(but only gets an error answer for an unknown method, as RxDB peers may probe); the pool's
database never changes because of a rejected message; an honest peer still replicates with
the pool afterwards; a peer refused by ``is_peer_valid`` gets no answers and no documents.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import string
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from replication_helpers import wait_equal
from schemas import PEER_SCHEMA as SCHEMA
from webrtc_helpers import Events

import p2pdb
from p2pdb.errors import P2PDBError
from p2pdb.plugins.replication_webrtc import (
    ConnectionHandler,
    Peer,
    ReplicationPool,
    aiortc_connection_handler,
    is_master,
    replicate_webrtc,
)
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer
from p2pdb.replication.wire import MAX_BATCH, STREAM_ID

TOPIC = "p2pdb-hostile-room"
WAIT = 10.0
Doc = dict[str, Any]


def pick_token(wanted: Callable[[str], bool]) -> str:
    """A random token (RxDB's shape: 10 a-z) for which ``wanted(token)`` holds."""
    rng = random.Random()
    while True:
        token = "".join(rng.choices(string.ascii_lowercase, k=10))
        if wanted(token):
            return token


class Victim:
    """The real p2pdb side: database, collection, pool, and its errors as they come."""

    def __init__(self, db: p2pdb.Database, docs: p2pdb.Collection, pool: ReplicationPool):
        self.db, self.docs, self.pool = db, docs, pool
        self.errors: list[Exception] = []
        self._new_error = asyncio.Event()
        pool.errors.subscribe(self._on_error)

    def _on_error(self, error: Exception) -> None:
        self.errors.append(error)
        self._new_error.set()

    async def error(self, code: str, *, after: int = 0, within: float = WAIT) -> P2PDBError:
        """The first error with ``code`` at index ``after`` or later, waiting for it."""
        try:
            async with asyncio.timeout(within):
                while True:
                    for error in self.errors[after:]:
                        if isinstance(error, P2PDBError) and error.code == code:
                            return error
                    self._new_error.clear()
                    await self._new_error.wait()
        except TimeoutError:
            codes = [getattr(e, "code", e) for e in self.errors[after:]]
            raise AssertionError(f"no {code} error within {within} s; got {codes}") from None

    def snapshot(self) -> list[tuple[int, Doc]]:
        """Every stored state, tombstones included, with its sequence number."""
        rows, _ = self.db.storage.changes_since("docs", 0, 10**9)
        return rows


class Hostile:
    """A raw connection handler that plays a peer by hand."""

    def __init__(self, handler: ConnectionHandler, events: Events, token: str) -> None:
        self.handler, self.events, self.token = handler, events, token
        self.peer: Peer | None = None
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()  # answers and stream events
        self.requests: asyncio.Queue[Doc] = asyncio.Queue()  # the pool's requests
        # how to answer the pool's master requests (when the pool is our fork)
        self.serve: Callable[[str, list[Any]], Any] | None = None
        self._ids = itertools.count()
        self._responder: asyncio.Task[None] | None = None

    async def connected(self) -> Peer:
        self.peer = await self.events.connect()
        self._responder = asyncio.get_running_loop().create_task(self._respond())
        return self.peer

    async def _respond(self) -> None:
        while True:
            received = await self.events.messages.get()
            if received.peer != self.peer:
                continue  # another peer of the topic (an honest one): not our business
            message = received.data
            if isinstance(message, dict) and isinstance(message.get("method"), str):
                await self.requests.put(message)
                if message["method"] == "token":
                    await self.answer(message["id"], self.token)
                elif self.serve is not None:
                    await self.answer(
                        message["id"], self.serve(message["method"], message["params"])
                    )
            else:
                await self.inbox.put(message)

    async def send(self, message: object) -> None:
        assert self.peer is not None
        await self.handler.send(self.peer, message)

    async def answer(self, request_id: str, result: Any) -> None:
        await self.send({"id": request_id, "result": result})

    async def send_raw(self, frame: str) -> None:
        """Put one frame on the data channel as is, bypassing the framing layer."""
        assert self.peer is not None
        link = self.handler.link_to(self.peer)  # the test needs the raw channel
        raw_send(link, frame)

    async def request(self, method: str, params: Any) -> str:
        request_id = f"hostile|{next(self._ids)}"
        await self.send({"id": request_id, "method": method, "params": params})
        return request_id

    async def reply(self, request_id: str, within: float = WAIT) -> Doc:
        """The answer to one of our requests (other messages are put back aside)."""
        async with asyncio.timeout(within):
            while True:
                message = await self.inbox.get()
                if isinstance(message, dict) and message.get("id") == request_id:
                    return message

    def seen_by(self, victim: Victim) -> Peer | None:
        """The pool's :class:`Peer` for this hostile peer, while connected."""
        own = self.handler.own_peer_id
        return next((p for p in victim.pool.sessions if p.peer_id == own), None)

    async def dropped(self, within: float = WAIT) -> None:
        """Wait until the pool closed our link."""
        assert self.peer is not None
        assert await self.events.disconnect(within) == self.peer

    async def close(self) -> None:
        if self._responder is not None:
            self._responder.cancel()
        await self.handler.close()


MakeHostile = Callable[..., Any]


@pytest.fixture
async def victim(tmp_path: Path, signaling: SignalingServer) -> AsyncIterator[Victim]:
    db = await p2pdb.create_database(str(tmp_path / "victim.db"))
    docs = await db.add_collection("docs", schema=SCHEMA)
    await docs.bulk_insert([{"id": f"doc-{i}", "text": f"text {i}", "n": i} for i in range(20)])
    await (await docs.find_one("doc-3")).remove()  # type: ignore[union-attr]
    refused: set[str] = set()
    handler = aiortc_connection_handler(signaling.url, ice_servers=[], host_addresses=["127.0.0.1"])
    pool = await replicate_webrtc(
        docs, TOPIC, handler, is_peer_valid=lambda peer: peer.peer_id not in refused
    )
    result = Victim(db, docs, pool)
    result.refused = refused  # type: ignore[attr-defined]
    yield result
    await pool.cancel()
    await db.close()


@pytest.fixture
async def make_hostile(signaling: SignalingServer, victim: Victim) -> AsyncIterator[MakeHostile]:
    """``await make_hostile(pool_is_master=True)``: a connected hostile peer whose token
    gives the pool the asked-for role (``refused=True``: the pool's is_peer_valid says no)."""
    made: list[Hostile] = []

    async def make(
        pool_is_master: bool = True,
        refused: bool = False,
        serve: Callable[[str, list[Any]], Any] | None = None,
    ) -> Hostile:
        own = victim.db.token
        token = pick_token(lambda t: is_master(own, t) == pool_is_master)
        handler = await aiortc_connection_handler(
            signaling.url, ice_servers=[], host_addresses=["127.0.0.1"]
        )(TOPIC)
        if refused:
            assert handler.own_peer_id is not None
            victim.refused.add(handler.own_peer_id)  # type: ignore[attr-defined]
        hostile = Hostile(handler, Events(handler), token)
        hostile.serve = serve
        made.append(hostile)
        await hostile.connected()
        if not refused:  # wait until the pool knows our token and the roles are set
            session = await wait_for(
                lambda: next((s for s in victim.pool.sessions.values() if s.token == token), None),
                victim,
            )
            await wait_for(lambda: session.is_master is not None, victim)
        return hostile

    yield make
    for hostile in made:
        await hostile.close()


async def wait_for(condition: Callable[[], Any], victim: Victim, within: float = WAIT) -> Any:
    """Wait on the pool's state changes until ``condition()`` is truthy."""
    async with asyncio.timeout(within):
        while not (result := condition()):
            await victim.pool.wait_for_change()
        return result


async def honest_peer_replicates(
    tmp_path: Path, signaling: SignalingServer, victim: Victim
) -> None:
    """After the attacks, an honest pool still replicates both ways with the victim."""
    db = await p2pdb.create_database(str(tmp_path / "honest.db"))
    try:
        docs = await db.add_collection("docs", schema=SCHEMA)
        await docs.insert({"id": "honest", "text": "hello"})
        handler = aiortc_connection_handler(
            signaling.url, ice_servers=[], host_addresses=["127.0.0.1"]
        )
        async with await replicate_webrtc(docs, TOPIC, handler):
            await wait_equal(victim.docs, docs)
            assert await docs.find_one("honest") is not None
            assert await docs.count() == 20  # 19 of the victim's (one deleted) + 1
    finally:
        await db.close()


# -- protocol violations: rejected, typed error, peer dropped, nothing stored ---------------

GOOD_DOC = {"id": "evil", "text": "x", "_deleted": False}

VIOLATIONS: list[tuple[str, Any, str, str | None]] = [
    # (name, message, code on pool.errors, code of the error answer or None for no answer)
    ("array message", [1, 2, 3], "WEBRTC_PROTOCOL_VIOLATION", None),
    ("object without id or method", {"hello": "world"}, "WEBRTC_PROTOCOL_VIOLATION", None),
    (
        "request without id",
        {"method": "masterChangesSince", "params": [None, 10]},
        "WEBRTC_PROTOCOL_VIOLATION",
        None,
    ),
    (
        "request with a number id",
        {"id": 7, "method": "token", "params": []},
        "WEBRTC_PROTOCOL_VIOLATION",
        None,
    ),
    (
        "params not a list",
        {"id": "r", "method": "masterChangesSince", "params": {"checkpoint": None}},
        "WEBRTC_PROTOCOL_VIOLATION",
        None,
    ),
    (
        "params missing",
        {"id": "r", "method": "masterWrite"},
        "WEBRTC_PROTOCOL_VIOLATION",
        None,
    ),
]
for _name, _params, _answer in [
    ("checkpoint with a negative seq", [{"seq": -1}, 10], "REPLICATION_BAD_CHECKPOINT"),
    ("checkpoint as a string", ["garbage", 10], "REPLICATION_BAD_CHECKPOINT"),
    ("checkpoint with a string seq", [{"seq": "5"}, 10], "REPLICATION_BAD_CHECKPOINT"),
    ("checkpoint as a list", [[1, 2], 10], "REPLICATION_BAD_CHECKPOINT"),
]:
    VIOLATIONS.append(
        (
            _name,
            {"id": "r", "method": "masterChangesSince", "params": _params},
            "WEBRTC_INVALID_DATA",
            _answer,
        )
    )
for _name, _batch in [
    ("batch size 0", 0),
    ("negative batch size", -5),
    ("absurd batch size", 10**12),
    ("batch size one over the cap", MAX_BATCH + 1),
    ("float batch size", 1.5),
    ("string batch size", "10"),
    ("boolean batch size", True),
    ("null batch size", None),
]:
    VIOLATIONS.append(
        (
            _name,
            {"id": "r", "method": "masterChangesSince", "params": [None, _batch]},
            "WEBRTC_PROTOCOL_VIOLATION",
            "WEBRTC_PROTOCOL_VIOLATION",
        )
    )
VIOLATIONS.append(
    (
        "masterChangesSince with three params",
        {"id": "r", "method": "masterChangesSince", "params": [None, 10, "extra"]},
        "WEBRTC_PROTOCOL_VIOLATION",
        "WEBRTC_PROTOCOL_VIOLATION",
    )
)
for _name, _params in [
    ("masterWrite without rows", []),
    ("masterWrite rows not a list", [{"newDocumentState": GOOD_DOC}]),
    ("masterWrite with non-object rows", [[1, "two", None]]),
    ("masterWrite row without newDocumentState", [[{"assumedMasterState": GOOD_DOC}]]),
    ("masterWrite newDocumentState not an object", [[{"newDocumentState": "evil"}]]),
    (
        "masterWrite assumedMasterState not an object",
        [[{"newDocumentState": GOOD_DOC, "assumedMasterState": 5}]],
    ),
    # one good row among bad ones: the whole request is refused before anything is written
    ("masterWrite with one bad row", [[{"newDocumentState": GOOD_DOC}, 42]]),
    ("masterWrite with two lists", [[], []]),
]:
    VIOLATIONS.append(
        (
            _name,
            {"id": "r", "method": "masterWrite", "params": _params},
            "WEBRTC_PROTOCOL_VIOLATION",
            "WEBRTC_PROTOCOL_VIOLATION",
        )
    )
for _name, _doc in [
    ("document without a required field", {"id": "evil", "_deleted": False}),
    ("document with a number id", {"id": 5, "text": "x", "_deleted": False}),
    ("document of the wrong type", {"id": "evil", "text": ["x"], "_deleted": False}),
    ("document with a non-boolean _deleted", {"id": "evil", "text": "x", "_deleted": "yes"}),
    ("document with a too long id", {"id": "e" * 65, "text": "x", "_deleted": False}),
    ("deleted document failing the schema", {"id": "doc-1", "_deleted": True}),
]:
    VIOLATIONS.append(
        (
            _name,
            {"id": "r", "method": "masterWrite", "params": [[{"newDocumentState": _doc}]]},
            "WEBRTC_INVALID_DATA",
            "REPLICATION_PUSH_INVALID",
        )
    )


async def test_each_violation_is_rejected_typed_and_the_peer_dropped(
    tmp_path: Path, signaling: SignalingServer, victim: Victim, make_hostile: MakeHostile
) -> None:
    before = victim.snapshot()
    for name, message, code, answer_code in VIOLATIONS:
        hostile = await make_hostile()
        seen = len(victim.errors)
        await hostile.send(message)
        error = await victim.error(code, after=seen)
        assert error.parameters.get("peer_id") == hostile.handler.own_peer_id, (name, error)
        if answer_code is not None:
            reply = await hostile.reply("r")
            assert reply["result"] is None and reply["error"]["code"] == answer_code, (name, reply)
        await hostile.dropped()
        await hostile.close()
        assert victim.snapshot() == before, name
    await honest_peer_replicates(tmp_path, signaling, victim)


async def test_oversized_row_count_is_refused_whole(
    victim: Victim, make_hostile: MakeHostile
) -> None:
    before = victim.snapshot()
    hostile = await make_hostile()
    rows = [{"newDocumentState": {**GOOD_DOC, "id": f"bulk-{i}"}} for i in range(MAX_BATCH + 1)]
    request_id = await hostile.request("masterWrite", [rows])
    await victim.error("WEBRTC_PROTOCOL_VIOLATION")
    reply = await hostile.reply(request_id)
    assert reply["error"]["code"] == "WEBRTC_PROTOCOL_VIOLATION"
    assert f"at most {MAX_BATCH}" in reply["error"]["message"]
    await hostile.dropped()
    assert victim.snapshot() == before


async def test_unknown_methods_get_an_error_answer_and_the_peer_stays(
    victim: Victim, make_hostile: MakeHostile
) -> None:
    before = victim.snapshot()
    hostile = await make_hostile()
    for method in ("dropTables", "masterChangesSince ", "__proto__", "x" * 200):
        seen = len(victim.errors)
        request_id = await hostile.request(method, [])
        reply = await hostile.reply(request_id)
        assert reply["result"] is None and reply["error"]["code"] == "WEBRTC_PROTOCOL_VIOLATION"
        await victim.error("WEBRTC_PROTOCOL_VIOLATION", after=seen)
    # still connected: a valid request is answered
    request_id = await hostile.request("masterChangesSince", [None, 5])
    reply = await hostile.reply(request_id)
    # in write order: doc-3 was deleted last, so its tombstone comes at the end
    assert [d["id"] for d in reply["result"]["documents"]] == [f"doc-{i}" for i in (0, 1, 2, 4, 5)]
    assert hostile.seen_by(victim) is not None
    assert victim.snapshot() == before


async def test_forged_tombstones(victim: Victim, make_hostile: MakeHostile) -> None:
    """A tombstone for an id the pool never saw is a legal write (the peer may have created
    and deleted it offline); it changes no query result, and one request holds at most
    MAX_BATCH of them. A tombstone for an existing document without the right assumed
    state is a conflict: nothing is written and the master state is returned."""
    live_before = {d.id: d.to_dict() for d in await victim.docs.find()}
    hostile = await make_hostile()
    flood = [
        {"newDocumentState": {"id": f"ghost-{i}", "text": "", "_deleted": True}}
        for i in range(MAX_BATCH)
    ]
    reply = await hostile.reply(await hostile.request("masterWrite", [flood]), within=60)
    assert reply["result"] == []
    assert {d.id: d.to_dict() for d in await victim.docs.find()} == live_before
    stored = victim.db.storage.get("docs", ["ghost-0", f"ghost-{MAX_BATCH - 1}"])
    assert all(state["_deleted"] for state in stored.values()) and len(stored) == 2

    # deleting existing documents: no assumed state, or a forged one, is a conflict
    forged = [
        {"newDocumentState": {"id": "doc-1", "text": "text 1", "n": 1, "_deleted": True}},
        {
            "newDocumentState": {"id": "doc-2", "text": "text 2", "n": 2, "_deleted": True},
            "assumedMasterState": {"id": "doc-2", "text": "forged", "n": 2, "_deleted": False},
        },
    ]
    reply = await hostile.reply(await hostile.request("masterWrite", [forged]))
    assert sorted(d["id"] for d in reply["result"]) == ["doc-1", "doc-2"]
    assert all(d["_deleted"] is False for d in reply["result"])
    assert {d.id: d.to_dict() for d in await victim.docs.find()} == live_before
    assert not [e for e in victim.errors if getattr(e, "code", "").startswith("WEBRTC")]


CHUNK_FRAMES: list[tuple[str, list[str], str]] = [
    ("a frame that is not JSON", ["{not json"], "WEBRTC_FRAME_INVALID"),
    ("a JSON string frame", ['"just a string"'], "WEBRTC_FRAME_INVALID"),
    ("a JSON number frame", ["42"], "WEBRTC_FRAME_INVALID"),
    ("chunk not an object", ['{"chunk": [1, 2]}'], "WEBRTC_CHUNK_INVALID"),
    (
        "chunk without an id",
        ['{"chunk": {"index": 0, "total": 2, "data": "{"}}'],
        "WEBRTC_CHUNK_INVALID",
    ),
    (
        "chunk index out of range",
        ['{"chunk": {"id": "c", "index": 5, "total": 2, "data": "{"}}'],
        "WEBRTC_CHUNK_INVALID",
    ),
    (
        "chunk with a negative total",
        ['{"chunk": {"id": "c", "index": 0, "total": -1, "data": "{"}}'],
        "WEBRTC_CHUNK_INVALID",
    ),
    (
        "chunk with an absurd total",
        ['{"chunk": {"id": "c", "index": 0, "total": 1000000000, "data": "{"}}'],
        "WEBRTC_CHUNK_INVALID",
    ),
    (
        "chunk data not a string",
        ['{"chunk": {"id": "c", "index": 0, "total": 2, "data": 5}}'],
        "WEBRTC_CHUNK_INVALID",
    ),
    (
        "chunk total changing",
        [
            '{"chunk": {"id": "c", "index": 0, "total": 3, "data": "{"}}',
            '{"chunk": {"id": "c", "index": 1, "total": 4, "data": "}"}}',
        ],
        "WEBRTC_CHUNK_INVALID",
    ),
    (
        "chunk index repeated",
        [
            '{"chunk": {"id": "c", "index": 0, "total": 3, "data": "{"}}',
            '{"chunk": {"id": "c", "index": 0, "total": 3, "data": "{"}}',
        ],
        "WEBRTC_CHUNK_INVALID",
    ),
    (
        "chunks that are not JSON once joined",
        [
            '{"chunk": {"id": "c", "index": 0, "total": 2, "data": "{\\"id\\":"}}',
            '{"chunk": {"id": "c", "index": 1, "total": 2, "data": "oops"}}',
        ],
        "WEBRTC_CHUNK_INVALID",
    ),
    (
        "too many half-sent chunked messages",
        [f'{{"chunk": {{"id": "c{i}", "index": 0, "total": 2, "data": "{{"}}}}' for i in range(40)],
        "WEBRTC_TOO_MANY_PARTIAL_MESSAGES",
    ),
]


async def test_invalid_chunk_frames_drop_the_peer(
    tmp_path: Path, signaling: SignalingServer, victim: Victim, make_hostile: MakeHostile
) -> None:
    before = victim.snapshot()
    for name, frames, code in CHUNK_FRAMES:
        hostile = await make_hostile()
        seen = len(victim.errors)
        for frame in frames:
            await hostile.send_raw(frame)
        error = await victim.error(code, after=seen)
        assert error.parameters.get("peer_id") == hostile.handler.own_peer_id, name
        await hostile.dropped()
        await hostile.close()
        assert victim.snapshot() == before, name
    await honest_peer_replicates(tmp_path, signaling, victim)


async def test_a_chunked_request_is_fine_and_a_forged_one_is_not(
    victim: Victim, make_hostile: MakeHostile
) -> None:
    """Chunking itself is allowed (RxDB sends it), the content is checked the same way."""
    hostile = await make_hostile()
    text = '{"id":"big","method":"masterChangesSince","params":[null,3]}'
    parts = [text[i : i + 7] for i in range(0, len(text), 7)]
    import orjson

    for index, part in enumerate(parts):
        frame = {"chunk": {"id": "chunkid", "index": index, "total": len(parts), "data": part}}
        await hostile.send_raw(orjson.dumps(frame).decode())
    reply = await hostile.reply("big")
    assert [d["id"] for d in reply["result"]["documents"]] == ["doc-0", "doc-1", "doc-2"]

    bad = '{"id":"big2","method":"masterWrite","params":[[7]]}'
    parts = [bad[i : i + 9] for i in range(0, len(bad), 9)]
    for index, part in reversed(list(enumerate(parts))):  # out of order is fine too
        frame = {"chunk": {"id": "chunk2", "index": index, "total": len(parts), "data": part}}
        await hostile.send_raw(orjson.dumps(frame).decode())
    await victim.error("WEBRTC_PROTOCOL_VIOLATION")
    await hostile.dropped()


async def test_answers_nobody_asked_for_are_a_violation(
    victim: Victim, make_hostile: MakeHostile
) -> None:
    before = victim.snapshot()
    for answer in (
        {"id": "never-asked", "result": {"documents": [GOOD_DOC], "checkpoint": {"seq": 1}}},
        {"id": "never-asked", "result": None, "error": {"message": "boom"}},
        {"id": None, "result": []},
        {"id": 12, "result": "token"},
    ):
        hostile = await make_hostile()
        seen = len(victim.errors)
        await hostile.send(answer)
        error = await victim.error("WEBRTC_PROTOCOL_VIOLATION", after=seen)
        assert "never made" in error.message
        await hostile.dropped()
        await hostile.close()
    # a forged id in the pool's own format, beyond what it issued, is refused too
    hostile = await make_hostile()
    first = await hostile.requests.get()  # the pool's token request: "<token>|<hex>|0"
    prefix = first["id"].rsplit("|", 1)[0]
    await hostile.send({"id": f"{prefix}|999999", "result": []})
    await victim.error("WEBRTC_PROTOCOL_VIOLATION")
    await hostile.dropped()
    assert victim.snapshot() == before


async def test_stream_events_from_a_peer_that_is_not_our_master(
    victim: Victim, make_hostile: MakeHostile
) -> None:
    """The pool leads this pair, so the peer has no stream to send: the event is refused
    and none of its documents is stored."""
    before = victim.snapshot()
    for result in (
        {"documents": [GOOD_DOC], "checkpoint": {"seq": 10**6}},
        {"documents": [{"id": "doc-0", "text": "overwritten", "_deleted": False}]},
        "RESYNC",
    ):
        hostile = await make_hostile(pool_is_master=True)
        seen = len(victim.errors)
        await hostile.send({"id": STREAM_ID, "result": result})
        error = await victim.error("WEBRTC_PROTOCOL_VIOLATION", after=seen)
        assert "not our master" in error.message
        await hostile.dropped()
        await hostile.close()
    assert victim.snapshot() == before


async def test_a_hostile_master_cannot_store_invalid_documents(
    tmp_path: Path, signaling: SignalingServer, victim: Victim, make_hostile: MakeHostile
) -> None:
    """Here the pool is the fork: it pulls from the hostile peer. Whatever the master sends,
    documents failing the schema are not stored, each with an error; answers of the wrong
    shape are typed errors, and the replication retries."""
    before = victim.snapshot()
    invalid_docs = [
        {"id": "bad-1", "_deleted": False},  # no text
        {"id": "bad-2", "text": 5, "_deleted": False},
        {"id": "bad-3", "text": "x", "_deleted": "no"},
        "not an object",
        {"text": "no id", "_deleted": False},
    ]
    mode = {"answer": {"documents": invalid_docs, "checkpoint": {"anything": 1}}}

    def serve(method: str, params: list[Any]) -> Any:
        if method == "masterChangesSince":
            return mode["answer"]
        return []  # masterWrite: everything accepted

    seen = len(victim.errors)
    hostile = await make_hostile(pool_is_master=False, serve=serve)
    for code in ("DOCUMENT_INVALID", "REPLICATION_BAD_DOCUMENT", "DOCUMENT_PRIMARY_KEY"):
        await victim.error(code, after=seen)
    (state,) = victim.pool.peer_states.values()
    await state.wait_for_in_sync()  # the pull went on past the invalid documents
    # stream events with the same documents: rejected the same way
    seen = len(victim.errors)
    await hostile.send({"id": STREAM_ID, "result": {"documents": invalid_docs, "checkpoint": {}}})
    await victim.error("DOCUMENT_INVALID", after=seen)
    # answers of the wrong shape
    seen = len(victim.errors)
    mode["answer"] = "not a batch"  # type: ignore[assignment]
    await state.re_sync()
    await victim.error("WEBRTC_BAD_ANSWER", after=seen)
    rows = victim.snapshot()
    assert [r for r in rows if r[1]["id"].startswith("bad-")] == []
    # the pool pushed its own documents to this "master" (it accepted everything) and
    # stored nothing from it
    assert [(seq, {k: v for k, v in s.items() if k != "_meta"}) for seq, s in rows] == [
        (seq, {k: v for k, v in s.items() if k != "_meta"}) for seq, s in before
    ]
    await hostile.close()
    await honest_peer_replicates(tmp_path, signaling, victim)


async def test_a_refused_peer_gets_no_answers_and_no_documents(
    tmp_path: Path, signaling: SignalingServer, victim: Victim, make_hostile: MakeHostile
) -> None:
    hostile = await make_hostile(refused=True)
    await hostile.request("token", [])
    await hostile.request("masterChangesSince", [None, 100])
    await hostile.request(
        "masterWrite", [[{"newDocumentState": {"id": "sneaky", "text": "x", "_deleted": False}}]]
    )
    # Meanwhile an honest peer replicates with the pool, so the pool is busy sending.
    await honest_peer_replicates(tmp_path, signaling, victim)
    for request_id in ("hostile|0", "hostile|1", "hostile|2"):
        with pytest.raises(TimeoutError):
            await hostile.reply(request_id, within=1.0)
    assert hostile.inbox.empty()
    asked = [hostile.requests.get_nowait()["method"] for _ in range(hostile.requests.qsize())]
    assert asked == ["token"]  # our handshake's token request; nothing else
    assert await victim.docs.find_one("sneaky") is None
    peer = hostile.seen_by(victim)
    assert peer is not None and victim.pool.sessions[peer].valid is False  # connected, ignored
    assert peer not in victim.pool.peer_states


async def test_a_zip_bomb_is_cut_off_and_the_peer_dropped(
    tmp_path: Path, signaling: SignalingServer, victim: Victim, make_hostile: MakeHostile
) -> None:
    """A compressed frame (compression.py) inflates to MAX_INFLATED bytes at most; a
    broken zlib stream is a bad frame. The victim accepts compressed frames by default."""
    import zlib

    from p2pdb.plugins.replication_webrtc.compression import MAX_INFLATED

    bomb = zlib.compress(b"[" + b" " * (32 * MAX_INFLATED) + b"]", 9)  # 32 MiB in ~32 KiB
    assert len(bomb) < 65_000
    broken = zlib.compress(b'{"id": "x", "method": "token", "params": []}')[:-6]
    before = victim.snapshot()
    for frame, code in ((bomb, "WEBRTC_MESSAGE_TOO_LARGE"), (broken, "WEBRTC_FRAME_INVALID")):
        hostile = await make_hostile()
        seen = len(victim.errors)
        assert hostile.peer is not None
        link = hostile.handler.link_to(hostile.peer)
        raw_send(link, frame)  # binary, as is
        error = await victim.error(code, after=seen)
        assert error.parameters.get("peer_id") == hostile.handler.own_peer_id
        await hostile.dropped()
        await hostile.close()
        assert victim.snapshot() == before
    await honest_peer_replicates(tmp_path, signaling, victim)


def raw_send(link: object, frame: str | bytes) -> None:
    """Put ``frame`` on the link's data channel as it is, on either engine."""
    engine = getattr(link, "engine", None)  # an AiortcEngine or a NativeEngine
    channel = getattr(engine, "native_channel", None) or getattr(engine, "channel", None)
    assert channel is not None
    channel.send(frame)
