"""Serve a local collection as the master side of replications (RxDB's
``rxStorageInstanceToReplicationHandler``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from reactivex import Observable
from reactivex import operators as ops

from ..changes import ChangeEvent
from ..errors import ConflictError, P2PDBError, ValidationError
from ..storage import ABSENT, Write
from ..storage.base import DamagedDocument
from .protocol import ChangesBatch, Resync, WriteRow, from_wire, to_wire

if TYPE_CHECKING:
    from ..collection import Collection

__all__ = ["CollectionHandler", "collection_handler", "parse_checkpoint"]

Doc = dict[str, Any]
_MAX_ATTEMPTS = 20  # local writes racing a push: retry the rows they touched


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

    def __init__(self, collection: Collection, origin: str = "replication") -> None:
        self.collection = collection
        self.origin = origin

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
        return ChangesBatch([to_wire(state) for _, state in pairs], {"seq": last})

    async def write(self, rows: Sequence[WriteRow] | Sequence[Mapping[str, Any]]) -> list[Doc]:
        """Write rows whose assumed state matches; return the current state of the others.

        Rows failing this collection's schema are not written: the valid rows are, then
        a :class:`ValidationError` names the invalid ones.
        """
        c = self.collection
        pk = c.schema.primary_key
        pending: dict[str, tuple[Doc, bool, WriteRow]] = {}
        invalid: list[str] = []
        for raw in rows:
            row = _as_row(raw)
            try:
                user, deleted = from_wire(row.new_document_state)
                prepared = c.prepare(user)
                pending[prepared[pk]] = (prepared, deleted, row)  # the last row of an id wins
            except ValidationError:
                invalid.append(str(row.new_document_state.get(pk)))
        conflicts: list[Doc] = []
        for _ in range(_MAX_ATTEMPTS):
            if not pending:
                break
            pending = await self._write_once(pending, conflicts)
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
        self, pending: dict[str, tuple[Doc, bool, WriteRow]], conflicts: list[Doc]
    ) -> dict[str, tuple[Doc, bool, WriteRow]]:
        c = self.collection
        is_equal = c.conflict_handler.is_equal
        current = c.storage.get_or_damaged(c.name, list(pending))
        writes: list[Write] = []
        for doc_id, (user, deleted, row) in pending.items():
            state = current.get(doc_id)
            if isinstance(state, DamagedDocument):  # unreadable here: the peer's copy repairs it
                writes.append(Write(user, deleted, expected=state.revision))
                continue
            master = to_wire(state) if state is not None else None
            if master is None:
                writes.append(Write(user, deleted, expected=ABSENT))
            elif is_equal(master, row.new_document_state):
                continue  # already there: a resent row, or the same edit on both sides
            elif row.assumed_master_state is not None and is_equal(
                master, row.assumed_master_state
            ):
                writes.append(Write(user, deleted, expected=state["_rev"]))  # type: ignore[index]
            else:
                conflicts.append(master)
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
        """
        db = self.collection.database
        origin = self.origin

        def batch(events: list[ChangeEvent]) -> ChangesBatch | Resync:
            # never promise a checkpoint past a write not yet emitted (other processes)
            seq = min(events[-1].seq, db.safe_seq)
            docs = [to_wire(e.document) for e in events if not skip_own or e.origin != origin]
            return ChangesBatch(docs, {"seq": seq})

        return self.collection.batches.pipe(ops.map(batch))


def collection_handler(collection: Collection, origin: str = "replication") -> CollectionHandler:
    """Serve ``collection`` as a master: pass the result to ``replicate()`` of a fork.

    ``origin`` is the ``origin`` of the change events its writes produce.
    """
    return CollectionHandler(collection, origin)
