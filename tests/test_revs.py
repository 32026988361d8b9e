"""The revs-diff extension between p2pdb peers (``p2pdb.replication.revs``, issue #13):
relayed states cross a link as stubs, a body only when the other side lacks that state.

Meshes of real SQLite files over the in-memory wire (``WirePipe``), counting the bodies that
cross each pipe; then hostile stubs, requests and answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import reactivex
from reactivex import Observable
from replication_helpers import ID_TEXT_SCHEMA, contents, wait_equal

import p2pdb
from p2pdb.causal import state_vector
from p2pdb.errors import P2PDBError, PeerError, ValidationError
from p2pdb.replication import (
    ChangesBatch,
    ReplicationState,
    Resync,
    WriteRow,
    collection_handler,
    replicate,
)
from p2pdb.replication.revs import (
    MAX_IDS,
    bodies_in,
    is_stub,
    make_stub,
    parse_stub,
    push_missing,
    speaks_revs,
)
from p2pdb.replication.rpc import WIRE_CODES
from p2pdb.replication.testing import WirePipe
from p2pdb.replication.wire import RemoteMaster, serve_request

Doc = dict[str, Any]


class Mesh:
    """Collections "docs" in their own files, linked fork -> master over WirePipes."""

    def __init__(self, stack: AsyncExitStack, folder: Path) -> None:
        self.stack, self.folder = stack, folder
        self.cols: dict[str, p2pdb.Collection] = {}
        self.pipes: dict[tuple[str, str], WirePipe] = {}
        self.states: dict[tuple[str, str], ReplicationState] = {}

    async def peer(self, name: str) -> p2pdb.Collection:
        db = await p2pdb.create_database(str(self.folder / f"{name}.db"))
        self.stack.push_async_callback(db.close)
        self.cols[name] = await db.add_collection("docs", schema=ID_TEXT_SCHEMA)
        return self.cols[name]

    async def link(self, fork: str, master: str, **options: Any) -> ReplicationState:
        pipe = WirePipe(collection_handler(self.cols[master]))
        await pipe.start()
        self.stack.push_async_callback(pipe.close)
        state = replicate(
            self.cols[fork], pipe.handler, f"from-{master}", retry_delay=0.01, **options
        )
        self.stack.push_async_callback(state.cancel)
        self.pipes[(fork, master)] = pipe
        self.states[(fork, master)] = state
        return state

    def bodies(self, fork: str, master: str) -> int:
        """Document bodies that crossed the pipe, both ways."""
        pipe = self.pipes[(fork, master)]
        return sum(bodies_in(m) for m in pipe.master_end.sent + pipe.fork_end.sent)

    def stubs(self, fork: str, master: str) -> int:
        pipe = self.pipes[(fork, master)]
        return sum(_stubs_in(m) for m in pipe.master_end.sent)


def _stubs_in(message: object) -> int:
    result = message.get("result") if isinstance(message, dict) else None
    docs = result.get("documents") if isinstance(result, dict) else None
    return sum(1 for d in docs if is_stub(d)) if isinstance(docs, list) else 0


@asynccontextmanager
async def mesh(folder: Path, *names: str) -> AsyncIterator[Mesh]:
    async with AsyncExitStack() as stack:
        m = Mesh(stack, folder)
        for name in names:
            await m.peer(name)
        yield m


async def insert(col: p2pdb.Collection, prefix: str, n: int) -> None:
    await col.bulk_insert([{"id": f"{prefix}{i:03d}", "text": f"{prefix} {i}"} for i in range(n)])


# -- over the pipe, counting bodies ------------------------------------------------------------


@pytest.mark.parametrize("revs", [True, False])
async def test_a_relayed_state_the_fork_holds_crosses_as_a_stub_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, revs: bool
) -> None:
    """b and c both hold a's 30 documents; linking c to b then moves no body either way
    (b's states are relayed: stubs; c's are relayed: asked, held). P2PDB_REVS=0: 30 bodies
    (the plain protocol: what this test would see without the extension)."""
    if not revs:
        monkeypatch.setenv("P2PDB_REVS", "0")
    async with mesh(tmp_path, "a", "b", "c") as m:
        await insert(m.cols["a"], "a", 30)
        await m.link("b", "a")
        await m.link("c", "a")
        await wait_equal(m.cols["a"], m.cols["b"], m.cols["c"])
        assert m.bodies("b", "a") == 30 and m.bodies("c", "a") == 30  # first-hand: bodies
        cb = await m.link("c", "b")
        await cb.wait_for_in_sync()
        assert speaks_revs(m.pipes[("c", "b")].handler) is revs
        if revs:
            assert m.bodies("c", "b") == 0
            assert m.stubs("c", "b") == 30
        else:
            assert m.bodies("c", "b") >= 30
            assert m.stubs("c", "b") == 0
        # c recorded b's state as its assumed master state: an edit is no conflict on b
        conflicts: list[object] = []
        cb.conflicts.subscribe(conflicts.append)
        await m.cols["c"].upsert({"id": "a007", "text": "edited on c"})
        await cb.wait_for_in_sync()
        await wait_equal(m.cols["a"], m.cols["b"], m.cols["c"])
        assert (await contents(m.cols["b"]))["a007"]["text"] == "edited on c"
        assert conflicts == []


async def test_a_fork_lacking_a_relayed_state_fetches_its_body_once(tmp_path: Path) -> None:
    async with mesh(tmp_path, "a", "b", "c") as m:
        await insert(m.cols["a"], "a", 30)
        ba = await m.link("b", "a")
        await ba.wait_for_in_sync()
        cb = await m.link("c", "b", batch_size=7)  # several pulls, each fetching its bodies
        await cb.wait_for_in_sync()
        assert await contents(m.cols["c"]) == await contents(m.cols["a"])
        assert m.stubs("c", "b") == 30
        assert m.bodies("c", "b") == 30  # each fetched once (p2pdbDocs answers)
        # c stores a's history: the same vectors as a, not new writes
        for doc in await m.cols["c"].find():
            original = await m.cols["a"].find_one(doc.id)
            assert original is not None
            assert state_vector(doc.to_dict(include_meta=True)) == state_vector(
                original.to_dict(include_meta=True)
            )
        # live: a's new writes reach c through b as stubs, fetched
        await insert(m.cols["a"], "n", 5)
        await wait_equal(m.cols["a"], m.cols["c"])
        await cb.wait_for_in_sync()
        assert m.bodies("c", "b") == 35


async def test_a_push_of_relayed_states_sends_only_what_the_master_lacks(tmp_path: Path) -> None:
    async with mesh(tmp_path, "a", "b", "c") as m:
        await insert(m.cols["a"], "a", 20)
        ba = await m.link("b", "a", live=False)
        await ba.wait_for_initial_replication()
        await insert(m.cols["a"], "x", 10)  # b never sees these from a
        ca = await m.link("c", "a")
        await wait_equal(m.cols["a"], m.cols["c"])
        await ca.wait_for_in_sync()
        cb = await m.link("c", "b", pull=False)  # c pushes its 30 relayed states to b
        await cb.wait_for_in_sync()
        pipe = m.pipes[("c", "b")]
        rows = sum(bodies_in(msg) for msg in pipe.fork_end.sent)
        assert rows == 10  # only those b lacked
        assert await contents(m.cols["b"]) == await contents(m.cols["a"])
        # the 20 it held are recorded as pushed: nothing is asked or sent again
        before = len(pipe.fork_end.sent)
        await m.cols["c"].upsert({"id": "a003", "text": "c edits"})
        await cb.wait_for_in_sync()
        writes = [msg for msg in pipe.fork_end.sent[before:] if msg.get("method") == "masterWrite"]
        assert [len(w["params"][0]) for w in writes] == [1]
        assert "assumedMasterState" in writes[0]["params"][0][0]


async def test_a_conflict_still_reaches_the_handler_for_concurrent_states(tmp_path: Path) -> None:
    """b and c edit a relayed document concurrently: stubs never hide the conflict."""
    async with mesh(tmp_path, "a", "b", "c") as m:
        await insert(m.cols["a"], "a", 3)
        ba, ca = await m.link("b", "a"), await m.link("c", "a")
        await wait_equal(m.cols["a"], m.cols["b"], m.cols["c"])
        await ba.pause()
        await ca.pause()
        await m.cols["b"].upsert({"id": "a001", "text": "b's"})
        await m.cols["c"].upsert({"id": "a001", "text": "c's"})
        cb = await m.link("c", "b")
        conflicts: list[object] = []
        cb.conflicts.subscribe(conflicts.append)
        await cb.wait_for_in_sync()
        assert len(conflicts) == 1
        await wait_equal(m.cols["b"], m.cols["c"])


# -- hostile requests, stubs and answers --------------------------------------------------------


async def test_hostile_revs_requests_are_refused(tmp_path: Path) -> None:
    async with mesh(tmp_path, "m") as m:
        col = m.cols["m"]
        await insert(col, "a", 2)
        handler = collection_handler(col).with_causal_order(revs=True)
        for params in ("x", [], [["a"] * (MAX_IDS + 1)], [[1]], [[""]], [["a" * 1025]], [{}]):
            with pytest.raises(PeerError) as info:
                await serve_request(handler, "p2pdbDocs", params, WIRE_CODES)
            assert info.value.code == WIRE_CODES.protocol_violation
        for params in ("x", [[{}] * (MAX_IDS + 1)], [["a000"]]):
            with pytest.raises(PeerError) as info:
                await serve_request(handler, "p2pdbHave", params, WIRE_CODES)
            assert info.value.code == WIRE_CODES.protocol_violation
        bad_stubs: list[object] = [
            {"id": "a000", "_deleted": False, "_meta": {"vv": {"w": 0}, "stub": True}},
            {"id": "a000", "_deleted": False, "text": "b", "_meta": {"vv": {"w": 1}, "stub": True}},
            {"id": "a000", "_deleted": "no", "_meta": {"vv": {"w": 1}, "stub": True}},
            {"id": "a000", "_deleted": False, "_meta": {"vv": {"w": 1}, "stub": True, "x": 1}},
            {"id": 7, "_deleted": False, "_meta": {"vv": {"w": 1}, "stub": True}},
        ]
        for stub in bad_stubs:
            with pytest.raises(ValidationError) as error:
                await serve_request(handler, "p2pdbHave", [[stub]], WIRE_CODES)
            assert error.value.code in ("REPLICATION_BAD_STUB", "REPLICATION_BAD_VECTOR")
        # unknown ids are left out; the known ones come with their vectors
        answer = await serve_request(handler, "p2pdbDocs", [["a001", "nope", "a001"]], WIRE_CODES)
        assert [d["id"] for d in answer] == ["a001"] and state_vector(answer[0])
        # a plain master (not agreed) knows neither method
        plain = collection_handler(col)
        for method in ("p2pdbDocs", "p2pdbHave"):
            with pytest.raises(PeerError, match="Unknown method"):
                await serve_request(plain, method, [[]], WIRE_CODES)
        assert await col.count() == 2


async def test_over_the_pipe_a_hostile_have_drops_nothing_into_storage(tmp_path: Path) -> None:
    async with mesh(tmp_path, "m") as m:
        async with WirePipe(collection_handler(m.cols["m"])) as pipe:
            assert isinstance(pipe.handler, RemoteMaster) and pipe.handler.revs
            bad = {"id": "z", "_deleted": False, "_meta": {"vv": {"w": -1}, "stub": True}}
            with pytest.raises(P2PDBError):
                await pipe.handler.have([bad])
            assert any(getattr(e, "code", None) == WIRE_CODES.invalid_data for e in pipe.errors)
        plain = RemoteMaster(pipe.fork_channel, reactivex.never())
        with pytest.raises(PeerError):
            await plain.docs(["a"])
        assert await m.cols["m"].count() == 0


class HostileMaster:
    """A master that claims the extension and answers what the test says."""

    causal = True
    revs = True

    def __init__(self, documents: list[object], docs_answer: list[object]) -> None:
        self.documents = documents
        self.docs_answer = docs_answer
        self.asked: list[list[str]] = []
        self.have_answer: list[object] = []

    def with_causal_order(self) -> HostileMaster:
        return self

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        if checkpoint is None:
            return ChangesBatch(self.documents, {"seq": 1})
        return ChangesBatch([], checkpoint)

    async def write(self, rows: Sequence[WriteRow]) -> list[Doc]:
        return []

    def stream(self) -> Observable[ChangesBatch | Resync]:
        return reactivex.never()

    async def docs(self, ids: list[str]) -> list[object]:
        self.asked.append(ids)
        return self.docs_answer

    async def have(self, stubs: list[Doc]) -> list[object]:
        return self.have_answer


async def _pull_once(
    fork: p2pdb.Collection, master: HostileMaster, name: str, *, fails: bool = False
) -> list[BaseException]:
    """One pull pass (``fails``: until the pull fails); the errors reported meanwhile."""
    errors: list[BaseException] = []
    failed = asyncio.Event()
    state = replicate(fork, master, name, live=False, push=False, retry_delay=5)
    state.errors.subscribe(lambda e: (errors.append(e), failed.set()))
    try:
        async with asyncio.timeout(5):
            await (failed.wait() if fails else state.wait_for_initial_replication())
    finally:
        await state.cancel()
    return errors


async def test_hostile_stubs_from_a_master_are_reported_and_nothing_is_stored(
    tmp_path: Path,
) -> None:
    good_vv = {"w": 3}
    stubs: list[object] = [
        {"id": "s1", "_deleted": False, "text": "in", "_meta": {"vv": good_vv, "stub": True}},
        {"id": "s2", "_deleted": False, "_meta": {"vv": {"bad writer!": 1}, "stub": True}},
        {"id": "s3", "_deleted": False, "_meta": {"vv": good_vv, "stub": True}},  # unknown
        {"id": "s4", "_deleted": False, "_meta": {"vv": good_vv, "stub": True}},  # other vv
    ]
    async with mesh(tmp_path, "f") as m:
        fork = m.cols["f"]
        other = {"id": "s4", "text": "not what the stub named", "_deleted": False}
        master = HostileMaster(stubs, [{**other, "_meta": {"vv": {"w": 9}}}])
        errors = await _pull_once(fork, master, "hostile")
        codes = sorted(getattr(e, "code", "") for e in errors)
        assert codes == ["REPLICATION_BAD_STUB", "REPLICATION_BAD_VECTOR"]
        assert master.asked == [["s3", "s4"]]
        assert await fork.count() == 0  # nothing applied but what a stub named exactly
        # an answer naming a document that was not asked for fails the pull: nothing stored
        unasked = {"id": "s6", "text": "x", "_deleted": False, "_meta": {"vv": good_vv}}
        liar = HostileMaster([make_stub("id", "s5", False, good_vv)], [unasked])
        errors = await _pull_once(fork, liar, "liar", fails=True)
        assert [getattr(e, "code", None) for e in errors][:1] == ["REPLICATION_BAD_RESPONSE"]
        assert await fork.count() == 0


async def test_a_have_answer_naming_rows_not_asked_fails_the_push(tmp_path: Path) -> None:
    master = HostileMaster([], [])
    master.have_answer = ["other"]
    row = WriteRow({"id": "a", "text": "t", "_deleted": False, "_meta": {"vv": {"w": 1}}})
    with pytest.raises(P2PDBError) as info:
        await push_missing(master, [row], {"a"}, "id")  # type: ignore[arg-type]
    assert info.value.code == "REPLICATION_BAD_RESPONSE"
    master.have_answer = ["a"]
    assert await push_missing(master, [row], {"a"}, "id") == []  # type: ignore[arg-type]
    assert await push_missing(master, [row], set(), "id") == [row]  # type: ignore[arg-type]


def test_parse_stub_round_trips_and_bodies_are_counted() -> None:
    stub = make_stub("id", "x", True, {"w": 2})
    assert parse_stub(stub, "id") == ("x", True, {"w": 2})
    body = {"id": "y", "_deleted": False}
    batch = {"id": "q", "result": {"documents": [stub, body], "checkpoint": None}}
    assert bodies_in(batch) == 1
    push = {"id": "q", "method": "masterWrite", "params": [[{"newDocumentState": body}]]}
    assert bodies_in(push) == 1
    assert bodies_in({"id": "q", "result": ["a", "b"]}) == 0  # a p2pdbHave answer
