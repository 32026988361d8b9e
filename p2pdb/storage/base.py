"""What the core needs from a storage: the :class:`Storage` and :class:`WriteTxn` protocols,
and the values they exchange (:class:`Write`, :data:`ANY_REVISION`, :data:`ABSENT`,
:class:`BodyCodec`).

The core (collections, queries, the tailer, replication) and plugins depend on these
protocols only; :class:`~p2pdb.storage.SQLiteStorage` is the implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self, TypeVar, runtime_checkable

from ..changes import LOCAL, ChangeEvent
from ..errors import ConflictError, EncryptionError
from ..query import CompiledQuery
from ..schema import Schema
from .purge import PurgeBatch

__all__ = [
    "ABSENT",
    "ANY_REVISION",
    "SMALL_WRITE_ROWS",
    "BodyCodec",
    "DamagedDocument",
    "Direction",
    "Skip",
    "Storage",
    "Write",
    "WriteCheck",
    "WriteTxn",
    "revision_height",
]

T = TypeVar("T")

#: Which checkpoint of a replication: ``"up"`` (pushes) or ``"down"`` (pulls).
Direction = Literal["up", "down"]
#: Rows of the change sequence to pass over unread: called with a row's id and revision.
Skip = Callable[[str, str], bool]


class _AnyRevision:
    def __repr__(self) -> str:
        return "ANY_REVISION"


#: ``Write.expected`` value meaning "write whatever is stored" (an upsert).
ANY_REVISION: Any = _AnyRevision()


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


#: ``Write.expected`` value meaning "no row for this id at all, not even a tombstone"
#: (replication writes a document it found missing; a tombstone written meanwhile wins).
ABSENT: Any = _Absent()

#: Rows a write may hold to be a small one (``Storage.write(fn, small=True)``): it then
#: takes tens of microseconds, and may run without a thread hop.
SMALL_WRITE_ROWS = 16


def revision_height(rev: str | None) -> int:
    """The height of a ``"<height>-<token>"`` revision (0 for none)."""
    return int(rev.split("-", 1)[0]) if rev else 0


class BodyCodec(Protocol):
    """Transforms document bodies on their way to and from disk (encryption uses it).

    ``encode`` must not change fields that are indexed or queried. The same codec also
    encodes the assumed master states (documents in wire form) of the collection's
    replications. Neither method may change its argument.
    """

    def encode(self, collection: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The form to store."""
        ...

    def decode(self, collection: str, doc_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """The form to hand out; raise :class:`~p2pdb.errors.EncryptionError` on tampering."""
        ...


@dataclass(frozen=True, slots=True)
class DamagedDocument:
    """A stored document whose body fails authentication (``ENCRYPTION_TAMPERED``): it is
    left out of queries and change feeds; reads by its id raise ``error``."""

    #: The document's id.
    id: str
    #: The stored revision of the damaged row (a write may expect it).
    revision: str
    #: True if the damaged row is a tombstone.
    deleted: bool
    #: Why: an :class:`~p2pdb.errors.EncryptionError` naming the id and the field.
    error: EncryptionError

    @property
    def field(self) -> str | None:
        """The encrypted field that failed to decrypt."""
        field: str | None = self.error.parameters.get("field")
        return field


@dataclass(slots=True)
class Write:
    """One document to write.

    ``document`` holds the user fields (the primary key included). ``expected`` is the
    revision the write is based on: a ``_rev`` string (the stored one must match), ``None``
    (the document must not exist, or be deleted) or :data:`ANY_REVISION`.
    """

    document: dict[str, Any]
    deleted: bool = False
    expected: Any = ANY_REVISION
    #: Causal history (``p2pdb.causal``): with ``new_event`` false, the vector of the
    #: replicated state this write copies; with ``new_event`` true (a local write, a
    #: resolution), one more history the new state follows, besides the previous state's.
    vector: dict[str, int] | None = None
    #: The write makes a new state here (the default), rather than copying a peer's.
    new_event: bool = True


@runtime_checkable
class WriteTxn(Protocol):
    """The handle a write function gets: it runs in the writer thread inside one transaction,
    so every call is synchronous and sees the transaction's own writes."""

    def get(self, collection: str, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Stored states (tombstones included) of the given ids that exist."""
        ...

    def put(
        self, collection: str, writes: Sequence[Write], origin: str = LOCAL
    ) -> list[dict[str, Any] | ConflictError]:
        """Write documents; per write, its new state or the :class:`ConflictError` it hit.
        Writes of the same id in one call apply in order; conflicting ones change nothing."""
        ...

    def get_checkpoint(self, collection: str, replication_id: str, direction: Direction) -> Any:
        """A replication's stored checkpoint (``None`` if none)."""
        ...

    def get_assumed(
        self, collection: str, replication_id: str, ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """A replication's assumed master states, by document id (decoded)."""
        ...

    def set_checkpoint(
        self, collection: str, replication_id: str, direction: Direction, value: Any
    ) -> None:
        """Store a replication's checkpoint (any JSON value)."""
        ...

    def set_assumed(
        self, collection: str, replication_id: str, states: Mapping[str, dict[str, Any]]
    ) -> None:
        """Store assumed master states, by document id (encoded by the collection's codec)."""
        ...

    def forget_replication(self, collection: str, replication_id: str) -> None:
        """Drop every checkpoint and assumed state of one replication."""
        ...

    def get_info(self, key: str) -> str | None:
        """A value of the file's info records (plugins keep theirs there)."""
        ...

    def set_info(self, key: str, value: str) -> None:
        """Store an info record."""
        ...

    def stored_schemas(self) -> dict[str, dict[str, Any]]:
        """The schema of every collection stored in the file (opened now or not)."""
        ...

    def recode_collection(
        self, collection: str, transform: Callable[[str, dict[str, Any]], dict[str, Any]]
    ) -> None:
        """Rewrite every stored body of a stored collection (live documents and tombstones)
        and every assumed master state of its replications as ``transform(doc_id, body)``,
        where ``body`` is the stored (encoded) form. Revisions and sequence numbers stay."""
        ...

    def drop_damaged(self, collection: str, doc_id: str) -> None:
        """Remove a damaged document's row entirely (no tombstone, no change event) and
        make every fork replication of the collection pull from the start again, so a
        peer's copy comes back. Raises ``DOCUMENT_NOT_FOUND`` if there is no such row and
        ``DOCUMENT_NOT_DAMAGED`` if it reads fine."""
        ...


#: A check run at the start of every write transaction; raising aborts the transaction.
WriteCheck = Callable[[WriteTxn], None]


@runtime_checkable
class Storage(Protocol):
    """The documents of every collection of one database file, their change sequence,
    replication state and info records. Opened by an awaited factory (:meth:`open`),
    closed by :meth:`close`, usable as ``async with``."""

    #: The file (``":memory:"`` for a temporary one).
    path: str
    #: A random token created with the file and kept for its whole life.
    token: str
    #: Called on the event loop with each committed transaction's events, in commit order.
    on_commit: Callable[[list[ChangeEvent]], None]
    #: Run at the start of every :meth:`write` transaction (see :data:`WriteCheck`).
    write_checks: list[WriteCheck]

    @classmethod
    async def open(cls, path: str) -> Self:
        """Open (creating if needed) the file at ``path``."""
        ...

    async def close(self) -> None:
        """Release the file; later calls raise :class:`~p2pdb.errors.ClosedError`."""
        ...

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        ...

    async def __aenter__(self) -> Self:
        """``async with``: returns the open storage."""
        ...

    async def __aexit__(self, *exc: object) -> None:
        """``async with``: closes it."""
        ...

    async def ensure_collection(
        self, name: str, schema: Schema, codec: BodyCodec | None = None
    ) -> None:
        """Create the collection's table and indexes, or check the stored schema matches."""
        ...

    def stored_schemas(self) -> dict[str, dict[str, Any]]:
        """The schema of every collection stored in the file (opened now or not)."""
        ...

    async def write(self, fn: Callable[[WriteTxn], T], *, small: bool = False) -> T:
        """Run ``fn(txn)`` in one transaction (one thread hop); events follow the commit,
        before the caller resumes. ``small``: it writes at most about
        :data:`SMALL_WRITE_ROWS` rows, and may run without the thread hop (on the event
        loop, when nothing else is being written)."""
        ...

    def get(self, collection: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Stored states (tombstones included) by id."""
        ...

    def get_one(self, collection: str, doc_id: str) -> dict[str, Any] | None:
        """One stored state (tombstone included) or ``None``."""
        ...

    def origin(self, collection: str, doc_id: str) -> str | None:
        """The ``origin`` of the write that stored a document's current state (``None``:
        not stored, or written before origins were kept); an inline read."""
        ...

    async def query(
        self, collection: str, query: CompiledQuery, skip: int = 0, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Live states matching a compiled query, sorted, skipped and limited."""
        ...

    async def count(self, collection: str, query: CompiledQuery) -> int:
        """How many live states match."""
        ...

    def last_seq(self, collection: str) -> int:
        """The sequence number of the collection's latest write (0 if none)."""
        ...

    def changes_since(
        self, collection: str, seq: int, limit: int, skip: Skip | None = None
    ) -> tuple[list[tuple[int, dict[str, Any]]], int]:
        """``(seq, state)`` pairs written after ``seq``, and the last sequence listed (rows
        for which ``skip(id, rev)`` is true are passed over: not read, not counted)."""
        ...

    def get_checkpoint(self, collection: str, replication_id: str, direction: Direction) -> Any:
        """A replication's stored checkpoint (``None`` if none)."""
        ...

    def get_assumed(
        self, collection: str, replication_id: str, ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """A replication's assumed master states, by document id (decoded)."""
        ...

    def list_replications(self) -> list[tuple[str, str]]:
        """``(collection, replication_id)`` of every replication with stored state."""
        ...

    def get_last_contact(self, collection: str, replication_id: str) -> float | None:
        """When the replication last stored a checkpoint (Unix time), if ever."""
        ...

    def get_info(self, key: str) -> str | None:
        """A value of the file's info records."""
        ...

    def data_version(self) -> int:
        """A number that changes when another connection commits to the file."""
        ...

    def current_seq(self) -> int:
        """The last sequence number committed to the file."""
        ...

    def rows_between(
        self, after: int, upto: int
    ) -> list[tuple[str, int, str, dict[str, Any], str]]:
        """``(collection, seq, id, state, origin)`` of rows with ``after < seq <= upto``
        that this object did not write."""
        ...

    def own_seq_ranges(self) -> list[tuple[int, int]]:
        """The sequence ranges this object wrote (not yet forgotten), sorted."""
        ...

    def forget_own_seqs(self, upto: int) -> None:
        """Drop the record of own writes up to ``upto``."""
        ...

    async def remove_collection(self, name: str) -> bool:
        """Drop a collection with its replication state and local documents, in one
        transaction; False if the file has no such collection."""
        ...

    def replication_state(self, collection: str, replication_id: str) -> dict[str, Any]:
        """One replication's stored state: ``{"up", "down", "contact", "assumed"}``."""
        ...

    def get_local(self, parent: str, doc_id: str) -> dict[str, Any] | None:
        """``{"id", "data", "_rev"}`` of a local document (``parent``: ``""`` for the
        database's own, else a collection name), or ``None``."""
        ...

    def list_local(self, parent: str) -> list[dict[str, Any]]:
        """Every local document of ``parent``, by id."""
        ...

    async def put_local(
        self,
        parent: str,
        doc_id: str,
        data: dict[str, Any],
        *,
        insert: bool,
        expected: str | None = None,
    ) -> tuple[dict[str, Any] | None, dict[str, Any]]:
        """Write a local document: ``(previous, new)``; with ``insert``, an existing one
        raises :class:`~p2pdb.errors.ConflictError` (``LOCAL_DOCUMENT_EXISTS``); with
        ``expected`` (a revision), another stored revision raises ``LOCAL_DOCUMENT_CONFLICT``."""
        ...

    async def delete_local(self, parent: str, doc_id: str) -> dict[str, Any] | None:
        """Delete a local document; what it was, or ``None``."""

    def get_or_damaged(
        self, collection: str, ids: Sequence[str]
    ) -> dict[str, dict[str, Any] | DamagedDocument]:
        """Like :meth:`get`, but a damaged document comes back as its
        :class:`DamagedDocument` instead of raising (replication overwrites it with a
        peer's copy)."""
        ...

    async def damaged(self, collection: str) -> list[DamagedDocument]:
        """Every stored document (tombstones too) of ``collection`` whose body fails
        authentication, by id; reads the whole collection."""
        ...

    def up_checkpoints(self, collection: str) -> dict[str, int | None]:
        """Each stored replication of ``collection``, by replication id: its up-checkpoint
        (``None``: it never stored one). The tombstone cleanup reads it."""
        ...

    async def purge_tombstones(
        self,
        collection: str,
        *,
        after_seq: int,
        upto_seq: int,
        older_than_lwt: float,
        scan: int,
        limit: int,
        replications: Sequence[str] = (),
    ) -> PurgeBatch:
        """Delete for good one batch of tombstones with ``after_seq < seq <= upto_seq``
        written before ``older_than_lwt`` (ms), looking at ``scan`` rows and deleting
        ``limit`` at most, in one short transaction; no change events (``p2pdb/cleanup.py``
        decides the bounds). A tombstone whose assumed master state in one of
        ``replications`` is live stays."""
        ...
