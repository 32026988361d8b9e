"""Serve a local collection as the master side of replications (RxDB's
``rxStorageInstanceToReplicationHandler``)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from reactivex import Observable

from ..causal import Vector, attach, merge, state_vector, take
from ..changes import ChangeEvent
from ..errors import ConflictError, P2PDBError, ReplicationError, ValidationError
from ..storage import ABSENT, Write
from ..storage.base import DamagedDocument
from .access import PENDING, AccessCheck, DocumentAccess
from .causal_order import fast_forward, stale
from .protocol import RESYNC, ChangesBatch, Resync, WriteRow, from_wire, to_wire
from .revs import (
    MAX_ID_LENGTH,
    make_stub,
    parse_stub,
    relayed,
    revs_enabled,
    serve_docs,
    serve_have,
)

if TYPE_CHECKING:
    from ..collection import Collection

__all__ = ["CollectionHandler", "collection_handler", "parse_checkpoint"]

Doc = dict[str, Any]
_MAX_ATTEMPTS = 20  # local writes racing a push: retry the rows they touched
#: Most documents in one stream batch: a large commit goes out as several, so the fork
#: applies the first while the rest are still being encoded and sent (a fork writes what
#: it receives in slices of the same size, ``downstream.SLICE_DOCS``).
STREAM_BATCH_DOCS = 200
#: The same for a remote whose documents carry no causal vectors: an RxDB peer (or a p2pdb
#: peer that proved no key). RxDB's fork pays per stream task what grows with its collection
#: (its memory storage merges each write into whole sorted index arrays; a checkpoint write),
#: so fewer, larger events cost it less (~11% of its CPU on a 10,000-document stream); it
#: merges queued events anyway, and a p2pdb fork writes what it receives in slices.
PLAIN_STREAM_BATCH_DOCS = 1000


def parse_checkpoint(checkpoint: object) -> int:
    """The sequence number in a checkpoint this master issued (``None`` = the start)."""
    if checkpoint is None:
        return 0
    if isinstance(checkpoint, Mapping):
        seq = checkpoint.get("seq")
        if type(seq) is int and seq >= 0:
            return seq
    raise ValidationError(
        f"Not a checkpoint of this master: {checkpoint!r}. Send null or a checkpoint it "
        "returned.",
        code="REPLICATION_BAD_CHECKPOINT",
    )


def _as_row(row: object) -> WriteRow:
    if isinstance(row, WriteRow):
        return row
    if isinstance(row, Mapping) and isinstance(row.get("new_document_state"), Mapping):
        assumed = row.get("assumed_master_state")
        if assumed is None or isinstance(assumed, Mapping):
            return WriteRow(
                dict(row["new_document_state"]), dict(assumed) if assumed is not None else None
            )
    raise ValidationError(
        "Each row must have a new_document_state object and an optional "
        "assumed_master_state object.",
        code="REPLICATION_BAD_ROW",
    )


class CollectionHandler:
    """The master side over a local collection. Create it with :func:`collection_handler`."""

    def __init__(
        self,
        collection: Collection,
        origin: str = "replication",
        access: DocumentAccess | None = None,
        origin_is_remote: bool = False,
        *,
        causal: bool = False,
        revs: bool = False,
    ) -> None:
        self.collection = collection
        self.origin = origin
        #: What the remote may read and write (``None``: everything).
        self.access = access
        #: Documents carry causal vectors (``_meta.vv``; the remote is p2pdb, see
        #: ``p2pdb.replication.causal_order``).
        self.causal = causal
        #: Relayed states go as stubs, and ``docs``/``have`` are served (the remote is a
        #: p2pdb peer that offered it, see ``p2pdb.replication.revs``); needs ``causal``.
        self.revs = revs and causal
        # stubs only when the remote sees stored states as they are (no outgoing modifier)
        self._stubs = self.revs and (access is None or access.outgoing is None)
        self._check = None if access is None else AccessCheck(access, collection.schema)
        #: ``origin`` names one remote database and no other writer, so a stored state it
        #: wrote is that remote's own last push (see :meth:`write`).
        self.origin_is_remote = origin_is_remote

    def with_causal_order(self, revs: bool | None = None) -> CollectionHandler:
        """This handler with causal vectors on its documents (a p2pdb fork asks for it),
        and with the revs-diff extension when ``revs`` (``None``: unless ``P2PDB_REVS=0``)."""
        revs = revs_enabled() if revs is None else revs
        if self.causal and self.revs == revs:
            return self
        return CollectionHandler(
            self.collection, self.origin, self.access, self.origin_is_remote, causal=True,
            revs=revs,
        )

    def _out(self, seq: int, state: Doc, view: Doc) -> Doc:
        """What a causal remote gets of ``state`` (whose outgoing form is ``view``): a
        stub when it is relayed and stubs are agreed, else the view with its vector."""
        vector = state_vector(state)
        if self._stubs and relayed(vector, seq, self.collection.storage.token):
            pk = self.collection.schema.primary_key
            doc_id = state[pk]
            if vector is not None and isinstance(doc_id, str) and len(doc_id) <= MAX_ID_LENGTH:
                return make_stub(pk, doc_id, view["_deleted"], vector)
        return attach(view, vector)

    async def docs(self, ids: list[str]) -> list[Doc]:
        """The current states of ``ids`` the remote may read, with vectors (``p2pdbDocs``)."""
        self.collection.check_open()
        return await serve_docs(self.collection, self._check, ids)

    async def have(self, stubs: list[Doc]) -> list[str]:
        """The ids of ``stubs`` whose state this master holds exactly (``p2pdbHave``; a
        malformed stub raises ``ValidationError`` ``REPLICATION_BAD_STUB``)."""
        self.collection.check_open()
        pk = self.collection.schema.primary_key
        parsed = [parse_stub(stub, pk) for stub in stubs]
        return await serve_have(self.collection, self._check, parsed)

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        """Documents written after ``checkpoint``, in write order."""
        if type(batch_size) is not int or batch_size < 1:
            raise ValidationError(
                f"batch_size must be a positive integer, got {batch_size!r}.",
                code="REPLICATION_BAD_BATCH_SIZE",
            )
        c = self.collection
        c.check_open()
        seq = parse_checkpoint(checkpoint)
        pairs, last = c.storage.changes_since(c.name, seq, batch_size)
        if self._check is None and self.causal:
            docs = [self._out(seq, state, to_wire(state)) for seq, state in pairs]
            return ChangesBatch(docs, {"seq": last})
        if self._check is None:
            return ChangesBatch([to_wire(state) for _, state in pairs], {"seq": last})
        return await self._readable_since(pairs, last, batch_size, self._check)

    async def _readable_since(
        self, pairs: list[tuple[int, Doc]], last: int, batch_size: int, check: AccessCheck
    ) -> ChangesBatch:
        """The next ``batch_size`` readable documents, reading past hidden ones.

        A short batch means "caught up" to the fork, so hidden documents never shorten one:
        pages are read until the batch is full or the sequence ends, and the checkpoint is
        the sequence number of the last document looked at (hidden ones included).
        """
        c = self.collection
        documents: list[Doc] = []
        while True:
            for seq, state in pairs:
                view = await check.view(to_wire(state))
                if view is not None:
                    documents.append(self._out(seq, state, view) if self.causal else view)
                    if len(documents) == batch_size:
                        return ChangesBatch(documents, {"seq": seq})
            if len(pairs) < batch_size:
                return ChangesBatch(documents, {"seq": last})
            await asyncio.sleep(0)  # a long run of hidden documents must not block the loop
            c.check_open()
            pairs, last = c.storage.changes_since(c.name, last, batch_size)

    async def write(self, rows: Sequence[WriteRow] | Sequence[Mapping[str, Any]]) -> list[Doc]:
        """Write rows whose assumed state matches; return the current state of the others.

        Rows failing this collection's schema are not written: the valid rows are, then
        a :class:`ValidationError` names the invalid ones. With ``access``, a push with a
        row the remote may not write (or whose document it may not read) is refused whole
        with ``ReplicationError`` ``REPLICATION_WRITE_REFUSED``, before any of it is written.
        """
        c = self.collection
        pk = c.schema.primary_key
        pending: dict[str, tuple[Doc, bool, WriteRow]] = {}
        vectors: dict[str, Vector | None] = {}
        invalid: list[str] = []
        for raw in rows:
            row = _as_row(raw)
            vector = None
            if self.causal:  # the vector out of the document, before any hook sees it
                # (a bad one raises ValidationError REPLICATION_BAD_VECTOR: a broken peer)
                new, vector = take(row.new_document_state)
                row = WriteRow(new, row.assumed_master_state)
            try:
                new = row.new_document_state
                if self._check is not None:
                    modified = await self._check.incoming(new)
                    if modified is None:
                        continue  # the incoming modifier dropped it: not stored, no conflict
                    new = modified
                user, deleted = from_wire(new)
                prepared = c.prepare(user)
                pending[prepared[pk]] = (prepared, deleted, row)  # the last row of an id wins
                vectors[prepared[pk]] = vector
            except ValidationError:
                invalid.append(str(row.new_document_state.get(pk)))
        conflicts: list[Doc] = []
        for _ in range(_MAX_ATTEMPTS):
            if not pending:
                break
            pending = await self._write_once(pending, conflicts, vectors)
        if pending:
            raise ConflictError(
                "Local writes kept racing this push; the fork will retry.",
                code="REPLICATION_WRITE_RACE",
            )
        if invalid:
            raise ValidationError(
                f"Documents {invalid!r} do not match the schema of {c.name!r} and were not "
                "written; the other documents were.",
                code="REPLICATION_PUSH_INVALID",
                ids=invalid,
            )
        return conflicts

    async def _write_once(
        self,
        pending: dict[str, tuple[Doc, bool, WriteRow]],
        conflicts: list[Doc],
        vectors: Mapping[str, Vector | None],
    ) -> dict[str, tuple[Doc, bool, WriteRow]]:
        c = self.collection
        is_equal = c.conflict_handler.is_equal
        current = c.storage.get_or_damaged(c.name, list(pending))
        writes: list[Write] = []
        found: list[Doc] = []
        refused: list[str] = []
        check = self._check
        for doc_id, (user, deleted, row) in pending.items():
            state = current.get(doc_id)
            # a pushed vector is stored as the state's history (a copy of the fork's state);
            # a state without one is a new event here, after the stored one
            vector = vectors.get(doc_id)
            copied = vector is not None
            if isinstance(state, DamagedDocument):  # unreadable here: the peer's copy repairs it
                repair = to_wire({**user, "_deleted": deleted})
                if check is not None and not await check.may_write(None, repair):
                    refused.append(doc_id)
                    continue
                writes.append(Write(user, deleted, expected=state.revision))
                continue
            stored = to_wire(state) if state is not None else None
            # what the remote sees of the stored state: it compares and conflicts with that
            master = stored if check is None or stored is None else await check.view(stored)
            if stored is not None and master is None:
                refused.append(doc_id)  # a document it may not read: never a conflict answer
                continue
            if master is None:
                write = Write(user, deleted, ABSENT, vector, new_event=not copied)
            elif is_equal(master, row.new_document_state):
                continue  # already there: a resent row, or the same edit on both sides
            elif stale(vector, state_vector(state)):  # an ancestor never wins: answer ours
                found.append(attach(master, state_vector(state)))
                continue
            elif (
                row.assumed_master_state is not None
                and is_equal(master, row.assumed_master_state)
            ) or fast_forward(state_vector(state), vector):  # it descends from ours
                rev = state["_rev"]  # type: ignore[index]
                write = Write(user, deleted, rev, vector, new_event=not copied)
            elif self.origin_is_remote and c.storage.origin(c.name, doc_id) == self.origin:
                # The stored state is this remote's own last push, whose answer it never got
                # (the link dropped, it crashed): it still assumes the state before. Its new
                # state follows that push, so it is no conflict; resolving one would hand it
                # its own older state back and undo its newer writes (issue #14). Vectors
                # may not show it (that push came without one and was stored as an event
                # here): the state stored descends from both.
                rev = state["_rev"]  # type: ignore[index]
                after = merge(state_vector(state), vector) if copied else None
                write = Write(user, deleted, rev, after or vector, new_event=not copied)
            else:  # a conflict, or a stale push (the fork sees it from the vectors)
                found.append(attach(master, state_vector(state)) if self.causal else master)
                continue
            new = to_wire({**user, "_deleted": deleted})
            if check is not None and not await check.may_write(stored, new):
                refused.append(doc_id)
                continue
            writes.append(write)
        if refused:
            raise ReplicationError(
                f"Writing {refused!r} is not allowed to this peer; nothing of this push was "
                "written.",
                code="REPLICATION_WRITE_REFUSED",
                ids=refused,
            )
        conflicts.extend(found)
        retry: dict[str, tuple[Doc, bool, WriteRow]] = {}
        if writes:
            pk = c.schema.primary_key
            for write, outcome in zip(writes, await c.bulk_write(writes, self.origin), strict=True):
                if isinstance(outcome, P2PDBError):  # a local write got in between: redo
                    retry[write.document[pk]] = pending[write.document[pk]]
        return retry

    def stream(self, *, skip_own: bool = False) -> Observable[ChangesBatch | Resync]:
        """Every later committed write to the collection, as batches.

        ``skip_own=True`` leaves out the documents this handler wrote (a fork's own pushes:
        it has them already); the checkpoint still moves past them.
        With ``access``, documents the remote may not read are left out too (the checkpoint
        still moves past them); if a hook is asynchronous the stream says ``RESYNC`` instead,
        and the fork pulls the batch through :meth:`changes_since`, which awaits the hooks
        (a batch filtered later could overtake an answer, which the fork must never see).
        """
        db = self.collection.database
        origin = self.origin
        check = self._check
        causal = self.causal

        def batches(events: list[ChangeEvent]) -> Sequence[ChangesBatch | Resync]:
            # never promise a checkpoint past a write not yet emitted (other processes)
            safe = db.safe_seq
            out: list[ChangesBatch] = []
            docs: list[Doc] = []
            per_batch = (
                STREAM_BATCH_DOCS if causal else max(STREAM_BATCH_DOCS, PLAIN_STREAM_BATCH_DOCS)
            )
            for event in events:
                if skip_own and event.origin == origin:
                    continue
                wire = to_wire(event.document)
                view = wire if check is None else check.view_now(wire)
                if view is PENDING:
                    return [RESYNC]
                if isinstance(view, dict):
                    docs.append(self._out(event.seq, event.document, view) if causal else view)
                    if len(docs) == per_batch:
                        out.append(ChangesBatch(docs, {"seq": min(event.seq, safe)}))
                        docs = []
            # the last batch carries the checkpoint past every event, skipped ones too
            last = {"seq": min(events[-1].seq, safe)}
            if docs or not out:
                out.append(ChangesBatch(docs, last))
            else:
                out[-1] = ChangesBatch(out[-1].documents, last)
            return out

        return _each(self.collection.batches, batches)


def _each(
    source: Observable[list[ChangeEvent]],
    split: Callable[[list[ChangeEvent]], Sequence[ChangesBatch | Resync]],
) -> Observable[ChangesBatch | Resync]:
    """``source`` with each item replaced by the items ``split`` makes of it, emitted at
    once, in order (``flat_map`` would go through a scheduler)."""

    def subscribe(observer: Any, scheduler: Any = None) -> Any:
        def on_next(events: list[ChangeEvent]) -> None:
            for item in split(events):
                observer.on_next(item)

        return source.subscribe(
            on_next, observer.on_error, observer.on_completed, scheduler=scheduler
        )

    return Observable(subscribe)


def collection_handler(
    collection: Collection,
    origin: str = "replication",
    access: DocumentAccess | None = None,
    origin_is_remote: bool = False,
) -> CollectionHandler:
    """Serve ``collection`` as a master: pass the result to ``replicate()`` of a fork.

    ``origin`` is the ``origin`` of the change events its writes produce; ``access`` limits
    what the remote reads and writes (per-peer rules, a selector, modifiers; see
    :class:`~p2pdb.replication.access.DocumentAccess`). ``origin_is_remote=True`` says that
    ``origin`` names one remote database and nobody else (as each WebRTC peer's master
    does): a push over a state that remote's own last push stored is then written, not
    answered as a conflict, since the remote missed only the answer.
    """
    return CollectionHandler(collection, origin, access, origin_is_remote)
