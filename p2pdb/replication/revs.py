"""Revs-diff between p2pdb peers: a relayed state crosses a link as a stub, its body only
when the other side needs it (issue #13, "no redundant traffic in a mesh").

In a mesh every peer relays what it received from one neighbour to all its others. Between
two p2pdb peers that both offered it (negotiated with the causal vectors: the in-process
pipe always, WebRTC when both hellos say ``"revs": 1``), this extension applies:

- **stubs, master to fork.** A state the master did not write itself (its vector's entry
  for the master's own writer is not the row's sequence number: a relayed copy) goes in a
  ``masterChangesSince`` answer or a stream event as a *stub*,
  ``{<pk>: id, "_deleted": bool, "_meta": {"vv": vector, "stub": true}}``. A state it wrote
  itself (first-hand) travels with its body, as before.
- **the fork resolves stubs** (:func:`fill_stubs`) before anything else looks at them: a
  stub equal to the fork's own state (same vector and deleted flag) stands for that state
  (the assumed master state is recorded, as a marker); a stub its own state descends from
  is dropped (an ancestor, never applied); for the others it asks the master once,
  ``p2pdbDocs [ids]`` (at most :data:`MAX_IDS`), for the current states, and applies only
  a state whose vector equals the stub's (a newer one comes with the master's later write,
  in its own batch or stream event). So nothing is applied that the body would not have
  brought, in the same order.
- **revs-diff, fork to master.** Before pushing relayed states, the fork asks
  ``p2pdbHave [stubs]`` which of them the master holds exactly (same vector and deleted
  flag); it pushes bodies only for the others, and records the held ones as if a push of
  them succeeded (their assumed master state is the fork's own state).

Both requests are checked like every peer input: :func:`parse_ids` and :func:`parse_stubs`
raise the transport's ``protocol_violation`` PeerError for malformed params; a malformed
stub from a master is a ``ValidationError`` ``REPLICATION_BAD_STUB`` (the document is
skipped and reported); an answer naming documents that were not asked for fails the pull or
push with ``REPLICATION_BAD_RESPONSE``. Modifiers break "same vector, same content": a
master with an ``outgoing`` modifier sends no stubs and one with an ``incoming`` modifier
holds nothing (``p2pdbHave`` answers ``[]``); a fork with a ``pull_modifier`` fetches every
stub it cannot drop, one with a ``push_modifier`` never asks ``p2pdbHave``.
``P2PDB_REVS=0`` in the environment switches the extension off for the process (neither
offered nor used), for measurements.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeGuard, runtime_checkable

from ..causal import Vector, attach, check_vector, compare, state_vector, take
from ..errors import P2PDBError, PeerError, ReplicationError, ValidationError
from ..storage.base import DamagedDocument
from .protocol import WriteRow, to_wire
from .rpc import WireErrorCodes

if TYPE_CHECKING:
    from ..collection import Collection
    from .access import AccessCheck
    from .fork import ForkCollection

__all__ = [
    "DOCS_METHOD",
    "ENV_VARIABLE",
    "HAVE_METHOD",
    "MAX_IDS",
    "MAX_ID_LENGTH",
    "REVS_METHODS",
    "Held",
    "Revs",
    "bodies_in",
    "fill_stubs",
    "is_stub",
    "make_stub",
    "parse_ids",
    "parse_stub",
    "parse_stubs",
    "push_missing",
    "relayed",
    "relayed_ids",
    "revs_enabled",
    "serve_docs",
    "serve_have",
    "speaks_revs",
]

Doc = dict[str, Any]
#: The fork asks for the current states of documents: ``[ids]`` -> ``[documents]``.
DOCS_METHOD = "p2pdbDocs"
#: The fork asks which relayed states the master holds exactly: ``[stubs]`` -> ``[ids]``.
HAVE_METHOD = "p2pdbHave"
REVS_METHODS = frozenset({DOCS_METHOD, HAVE_METHOD})
#: Most ids (or stubs) in one request; the fork splits longer lists.
MAX_IDS = 1000
#: Longest id a stub may name (a longer one always travels with its body).
MAX_ID_LENGTH = 1024
_STUB_META = frozenset({"vv", "stub"})
#: ``P2PDB_REVS=0`` switches the extension off for the process (neither offered nor used).
ENV_VARIABLE = "P2PDB_REVS"


def revs_enabled() -> bool:
    """False when ``P2PDB_REVS=0``: the process neither offers nor uses the extension."""
    return os.environ.get(ENV_VARIABLE, "1") != "0"


@runtime_checkable
class Revs(Protocol):
    """A master handler that speaks the extension (both ends offered it)."""

    #: True when stubs and the two requests are agreed.
    revs: bool

    async def docs(self, ids: list[str]) -> list[Doc]:
        """The current states (with their vectors) of those of ``ids`` it holds."""
        ...

    async def have(self, stubs: list[Doc]) -> list[str]:
        """The ids of the stubs whose state it holds exactly."""
        ...


@dataclass(frozen=True, slots=True)
class Held:
    """A stub equal to the fork's own state (:func:`fill_stubs`): the master holds exactly
    what the fork holds, so only the assumed master state is to be recorded."""

    doc_id: str
    #: The fork's state in wire form (what the master holds).
    wire: Doc
    vector: Vector

    def document(self) -> Doc:
        """The state as a master document with its vector (for the full path)."""
        return attach(self.wire, self.vector)


def speaks_revs(handler: object) -> TypeGuard[Revs]:
    """True when ``handler`` sends stubs and answers ``p2pdbDocs``/``p2pdbHave``."""
    # what isinstance(handler, Revs) checks, without its cost (see speaks_causal)
    return getattr(handler, "revs", None) is True and all(
        callable(getattr(handler, name, None)) for name in ("docs", "have")
    )


def relayed(vector: Vector | None, seq: int, writer: str) -> bool:
    """True for a stored state that ``writer`` (this file) did not write itself at ``seq``
    (a copy of another peer's state): it may travel as a stub."""
    return vector is not None and vector.get(writer) != seq


def bodies_in(message: object) -> int:
    """How many document bodies a replication message carries (stubs not counted): the rows
    of a ``masterWrite`` request, the documents of a ``masterChangesSince`` answer or a
    stream batch, and the documents of a list answer (``p2pdbDocs``, conflict answers)."""
    if not isinstance(message, Mapping):
        return 0
    docs: object = None
    if message.get("method") == "masterWrite":
        params = message.get("params")
        docs = params[0] if isinstance(params, list) and params else None
    else:
        result = message.get("result")
        docs = result.get("documents") if isinstance(result, Mapping) else result
    if not isinstance(docs, list):
        return 0
    return sum(1 for doc in docs if isinstance(doc, Mapping) and not is_stub(doc))


def relayed_ids(pairs: Iterable[tuple[int, Doc]], writer: str, pk: str) -> set[str]:
    """The ids of the ``(seq, state)`` pairs whose states are :func:`relayed`."""
    return {state[pk] for seq, state in pairs if relayed(state_vector(state), seq, writer)}


def make_stub(pk: str, doc_id: str, deleted: bool, vector: Vector) -> Doc:
    """The stub of a state."""
    return {pk: doc_id, "_deleted": deleted, "_meta": {"vv": vector, "stub": True}}


def is_stub(doc: object) -> bool:
    """True for a document that says it is a stub (checked by :func:`parse_stub`)."""
    if type(doc) is not dict and not isinstance(doc, Mapping):  # dict first: ABCs are slow
        return False
    meta = doc.get("_meta")
    if meta is None:
        return False
    return (type(meta) is dict or isinstance(meta, Mapping)) and meta.get("stub") is True


def _bad_stub(message: str) -> ValidationError:
    return ValidationError(message, code="REPLICATION_BAD_STUB")


def parse_stub(doc: object, pk: str) -> tuple[str, bool, Vector]:
    """The id, deleted flag and vector of a stub; ``ValidationError``
    ``REPLICATION_BAD_STUB`` for anything else (``REPLICATION_BAD_VECTOR`` for its vector)."""
    if not isinstance(doc, Mapping) or set(doc) - {pk, "_deleted", "_meta"}:
        raise _bad_stub(f"A stub holds only {pk!r}, _deleted and _meta.")
    doc_id, deleted, meta = doc.get(pk), doc.get("_deleted"), doc.get("_meta")
    if not isinstance(doc_id, str) or not 0 < len(doc_id) <= MAX_ID_LENGTH:
        raise _bad_stub(f"A stub's id must be a string of 1..{MAX_ID_LENGTH} characters.")
    if not isinstance(deleted, bool):
        raise _bad_stub("A stub's _deleted must be true or false.")
    if not isinstance(meta, Mapping) or set(meta) != _STUB_META or meta["stub"] is not True:
        raise _bad_stub('A stub\'s _meta is {"vv": vector, "stub": true}.')
    return doc_id, deleted, check_vector(meta["vv"])


def _one_list(params: object, method: str, what: str, codes: WireErrorCodes) -> list[Any]:
    """The one list of untrusted ``[items]`` params, at most :data:`MAX_IDS` long."""
    if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], list):
        raise PeerError(f"{method} takes [{what}].", code=codes.protocol_violation)
    items: list[Any] = params[0]
    if len(items) > MAX_IDS:
        raise PeerError(
            f"{method} with {len(items)} {what}; at most {MAX_IDS}.",
            code=codes.protocol_violation,
        )
    return items


def parse_ids(params: object, codes: WireErrorCodes) -> list[str]:
    """The ids of untrusted ``p2pdbDocs`` params ``[ids]``; the ``protocol_violation``
    PeerError for anything else (more than :data:`MAX_IDS`, an id that is no string of
    1..:data:`MAX_ID_LENGTH` characters)."""
    ids = _one_list(params, DOCS_METHOD, "ids", codes)
    for doc_id in ids:
        if not isinstance(doc_id, str) or not 0 < len(doc_id) <= MAX_ID_LENGTH:
            raise PeerError(
                f"{DOCS_METHOD}: each id is a string of 1..{MAX_ID_LENGTH} characters.",
                code=codes.protocol_violation,
            )
    return list(ids)


def parse_stubs(params: object, codes: WireErrorCodes) -> list[Doc]:
    """The stubs of untrusted ``p2pdbHave`` params ``[stubs]``: at most :data:`MAX_IDS`
    objects (the ``protocol_violation`` PeerError for anything else); the handler checks
    each with :func:`parse_stub`."""
    stubs = _one_list(params, HAVE_METHOD, "stubs", codes)
    if not all(isinstance(stub, dict) for stub in stubs):
        raise PeerError(f"{HAVE_METHOD}: each stub is an object.", code=codes.protocol_violation)
    return list(stubs)


# -- the master's side ---------------------------------------------------------------------


async def serve_docs(
    collection: Collection, check: AccessCheck | None, ids: Sequence[str]
) -> list[Doc]:
    """The current states of ``ids`` the remote may read, with their vectors (unknown or
    damaged ones are left out)."""
    current = collection.storage.get_or_damaged(collection.name, list(dict.fromkeys(ids)))
    out: list[Doc] = []
    for state in current.values():
        if isinstance(state, DamagedDocument):
            continue
        view: Doc | None = to_wire(state)
        if check is not None and view is not None:
            view = await check.view(view)
        if view is not None:
            out.append(attach(view, state_vector(state)))
    return out


async def serve_have(
    collection: Collection, check: AccessCheck | None, stubs: Sequence[tuple[str, bool, Vector]]
) -> list[str]:
    """The ids whose stored state is exactly the stub's (vector and deleted flag) and
    readable by the remote; none when an ``incoming`` or ``outgoing`` modifier is set."""
    if check is not None and (check.access.incoming or check.access.outgoing):
        return []
    ids = [doc_id for doc_id, _, _ in stubs]
    current = collection.storage.get_or_damaged(collection.name, ids)
    held: list[str] = []
    for doc_id, deleted, vector in stubs:
        state = current.get(doc_id)
        if not isinstance(state, dict) or bool(state.get("_deleted")) != deleted:
            continue
        if compare(state_vector(state), vector) != "equal":
            continue
        if check is None or await check.view(to_wire(state)) is not None:
            held.append(doc_id)
    return held


# -- the fork's side -----------------------------------------------------------------------


def _bad_answer(message: str) -> ReplicationError:
    return ReplicationError(message, code="REPLICATION_BAD_RESPONSE")


async def fill_stubs(
    handler: Revs,
    collection: ForkCollection,
    documents: Sequence[object],
    report: Callable[[P2PDBError], None],
    *,
    modified: bool,
) -> list[object]:
    """``documents`` with each stub replaced by the state it names, or dropped (see the
    module docstring): a stub equal to the fork's own state becomes a :class:`Held`, one it
    lacked the fetched document. ``modified``: the fork has a ``pull_modifier`` (its rows are
    not the master's form, so a stub equal to one is fetched too). A malformed stub is
    reported and dropped."""
    pk = collection.schema.primary_key
    stubs: dict[int, tuple[str, bool, Vector]] = {}
    for index, doc in enumerate(documents):
        if is_stub(doc):
            try:
                stubs[index] = parse_stub(doc, pk)
            except ValidationError as exc:
                exc.parameters.setdefault("document_id", _id_of(doc, pk))
                report(exc)
                stubs[index] = ("", False, {})  # dropped below
    if not stubs:
        return list(documents)
    ids = [doc_id for doc_id, _, _ in stubs.values() if doc_id]
    forks = collection.database.storage.get_or_damaged(collection.name, ids)
    named: dict[int, object | None] = {}
    wanted: dict[str, Vector] = {}
    for index, (doc_id, deleted, vector) in stubs.items():
        named[index] = None
        fork = forks.get(doc_id) if doc_id else None
        if not doc_id:
            continue
        order = compare(state_vector(fork), vector) if isinstance(fork, dict) else "unknown"
        if order == "after":
            continue  # the stub names an ancestor of the fork's state: never applied
        same = isinstance(fork, dict) and bool(fork.get("_deleted")) == deleted
        if order == "equal" and same and not modified:
            named[index] = Held(doc_id, to_wire(fork), vector)  # type: ignore[arg-type]
        else:
            wanted[doc_id] = vector
    fetched = await _fetch(handler, wanted, pk)
    out: list[object] = []
    for index, doc in enumerate(documents):
        if index not in stubs:
            out.append(doc)
        elif named[index] is not None:
            out.append(named[index])
        elif stubs[index][0] in fetched:
            out.append(fetched[stubs[index][0]])
    return out


async def _fetch(handler: Revs, wanted: Mapping[str, Vector], pk: str) -> dict[str, Doc]:
    """The master's current states of ``wanted`` whose vectors are the stubs'."""
    out: dict[str, Doc] = {}
    ids = list(wanted)
    for start in range(0, len(ids), MAX_IDS):
        chunk = ids[start : start + MAX_IDS]
        answer = await handler.docs(chunk)
        if not isinstance(answer, list):
            raise _bad_answer(f"{DOCS_METHOD} must answer a list of documents.")
        asked = set(chunk)
        for doc in answer:
            if not isinstance(doc, Mapping) or doc.get(pk) not in asked:
                raise _bad_answer(f"{DOCS_METHOD} answered a document that was not asked for.")
            try:
                _, vector = take(doc)
            except ValidationError as exc:
                raise _bad_answer(f"{DOCS_METHOD} answered a bad vector: {exc.message}") from exc
            doc_id = doc[pk]
            if compare(vector, wanted[doc_id]) == "equal":
                out[doc_id] = dict(doc)
            # else: the master wrote it again since; that write comes in its own batch
    return out


def _id_of(doc: object, pk: str) -> object:
    return doc.get(pk) if isinstance(doc, Mapping) else None


async def push_missing(
    handler: Revs, rows: list[WriteRow], relayed_ids: Iterable[str], pk: str
) -> list[WriteRow]:
    """The rows to push: ``rows`` without the relayed states the master holds exactly
    (asked with ``p2pdbHave``). ``rows`` carry their vectors (``_meta.vv``)."""
    candidates = set(relayed_ids)
    stubs: list[Doc] = []
    for row in rows:
        doc = row.new_document_state
        doc_id, vector = doc.get(pk), state_vector(doc)
        if doc_id in candidates and vector is not None and isinstance(doc_id, str):
            if 0 < len(doc_id) <= MAX_ID_LENGTH:
                stubs.append(make_stub(pk, doc_id, bool(doc.get("_deleted")), vector))
    held: set[str] = set()
    for start in range(0, len(stubs), MAX_IDS):
        chunk = stubs[start : start + MAX_IDS]
        answer = await handler.have(chunk)
        asked = {stub[pk] for stub in chunk}
        if not isinstance(answer, list) or not all(
            isinstance(i, str) and i in asked for i in answer
        ):
            raise _bad_answer(f"{HAVE_METHOD} must answer a list of ids that were asked.")
        held.update(answer)
    return [row for row in rows if row.new_document_state.get(pk) not in held]
