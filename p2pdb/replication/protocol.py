"""The replication handler contract: what a fork asks of a master, and the messages between.

Documents travel in "wire form": the user fields plus ``_deleted`` (no ``_rev``, no
``_meta``), as RxDB sends them. Checkpoints are opaque JSON chosen by the master.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol, runtime_checkable

from reactivex import Observable

from ..errors import ReplicationError, ValidationError

__all__ = [
    "RESYNC",
    "ChangesBatch",
    "ReplicationHandler",
    "Resync",
    "WriteRow",
    "from_wire",
    "to_wire",
]

Doc = dict[str, Any]
Resync = Literal["RESYNC"]

#: Stream item meaning "you may have missed changes: iterate from your checkpoint again".
RESYNC: Final[Resync] = "RESYNC"

_LOCAL_ONLY = ("_rev", "_meta", "_attachments")


@dataclass(frozen=True, slots=True)
class ChangesBatch:
    """Documents written on the master after a checkpoint, and the checkpoint after them."""

    documents: list[Doc]
    checkpoint: Any


@dataclass(frozen=True, slots=True)
class WriteRow:
    """A fork's new state of one document, and the master state it was based on
    (``None`` if the fork never saw the document on the master)."""

    new_document_state: Doc
    assumed_master_state: Doc | None = None


@runtime_checkable
class ReplicationHandler(Protocol):
    """The master side of a replication, as seen by a fork.

    Implement these three to replicate a collection with your own server:

    - ``changes_since(checkpoint, batch_size)``: documents (tombstones included) written
      after ``checkpoint`` (``None`` = from the start), in a stable order, at most
      ``batch_size``, and the checkpoint after the last one (the given one if none).
      Fewer than ``batch_size`` documents means "caught up".
    - ``write(rows)``: for each row, if the master's current state equals
      ``assumed_master_state`` (or the document does not exist), store
      ``new_document_state``; otherwise leave it and return the current state. Returns the
      master states of the conflicting rows (``[]`` when all were written). Must be
      idempotent: a fork resends rows after a failure.
    - ``stream()``: an Observable of :class:`ChangesBatch` for every later write, or
      :data:`RESYNC` when events may have been missed (for example after a reconnect).
    """

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        """See the class docstring."""
        ...

    async def write(self, rows: Sequence[WriteRow]) -> list[Doc]:
        """See the class docstring."""
        ...

    def stream(self) -> Observable[ChangesBatch | Resync]:
        """See the class docstring."""
        ...


def to_wire(state: Mapping[str, Any]) -> Doc:
    """A stored state in wire form: user fields plus ``_deleted``."""
    doc = {k: v for k, v in state.items() if k not in _LOCAL_ONLY}
    doc["_deleted"] = bool(doc.get("_deleted", False))
    return doc


def from_wire(doc: object) -> tuple[Doc, bool]:
    """Split a wire document into its user fields and its deleted flag.

    ``_rev``, ``_meta`` and ``_attachments`` from the other side are dropped; anything else
    that is not a JSON object raises :class:`ValidationError`.
    """
    if not isinstance(doc, Mapping):
        raise ValidationError(
            f"A replicated document must be a JSON object, got {type(doc).__name__}.",
            code="REPLICATION_BAD_DOCUMENT",
        )
    deleted = doc.get("_deleted", False)
    if not isinstance(deleted, bool):
        raise ValidationError(
            f"_deleted must be true or false, got {deleted!r}.", code="REPLICATION_BAD_DOCUMENT"
        )
    user = {k: v for k, v in doc.items() if k != "_deleted" and k not in _LOCAL_ONLY}
    return user, deleted


def as_changes_batch(result: object) -> ChangesBatch:
    """Accept a :class:`ChangesBatch`, any object with ``documents`` and ``checkpoint``, or a
    dict with those keys (what a user-written handler may return)."""
    if isinstance(result, ChangesBatch):
        documents, checkpoint = result.documents, result.checkpoint
    elif isinstance(result, Mapping) and "documents" in result:
        documents, checkpoint = result["documents"], result.get("checkpoint")
    elif hasattr(result, "documents") and hasattr(result, "checkpoint"):
        documents, checkpoint = result.documents, result.checkpoint
    else:
        raise ReplicationError(
            "changes_since() must return documents and a checkpoint, got "
            f"{type(result).__name__}.",
            code="REPLICATION_BAD_RESPONSE",
        )
    if not isinstance(documents, list):
        raise ReplicationError(
            "changes_since() returned documents that are not a list.",
            code="REPLICATION_BAD_RESPONSE",
        )
    return ChangesBatch(documents, checkpoint)
