"""Causal order of document states: a small version vector per stored state.

In a mesh a peer is the fork of several masters, and RxDB's wire form (user fields and
``_deleted``) cannot tell whether one state is an ancestor of another: with ``master_wins``
a fork could take an older state and push it over a newer one (issue #14). So every state
p2pdb stores carries its causal history, ``{writer: counter}``:

- ``writer`` is the token of the database file that made a write, ``counter`` that file's
  change sequence number at the write: unique per write, growing with every write;
- a local write stores the previous state's vector plus its own entry (:func:`stored_vector`);
- a replicated state is stored with the vector it came with (a copy, not a new write);
- a conflict's resolution merges both sides' vectors and adds its own entry.

``a`` happened before ``b`` when ``a``'s vector is pointwise <= ``b``'s and different
(:func:`compare`). A state without a vector (an RxDB peer's, an older file's, one whose
vector outgrew :data:`MAX_ENTRIES`) has no causal information: it is never ordered, so the
conflict handler decides as before. Vectors never reach user code, schema validation or
RxDB peers: stored in the ``vv`` column of the document's row (read as ``_meta["vv"]``), and
between p2pdb peers under ``_meta`` of the wire document (:func:`attach`, :func:`take`),
which every p2pdb version drops from user fields.

This module is pure (no storage, no replication): both layers use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

from .errors import ValidationError

__all__ = [
    "MAX_COUNTER",
    "MAX_ENTRIES",
    "MAX_WRITER_LENGTH",
    "Order",
    "Vector",
    "attach",
    "check_vector",
    "compare",
    "merge",
    "state_vector",
    "stored_vector",
    "take",
]

#: ``{writer token: counter}``.
Vector = dict[str, int]
#: How two states are ordered: ``"before"`` (the first is an ancestor of the second),
#: ``"after"``, ``"equal"`` vectors, ``"concurrent"``, or ``"unknown"`` (one has no vector).
Order = Literal["before", "after", "equal", "concurrent", "unknown"]

#: Most writers one state's vector names; a longer one is dropped (no causal information),
#: never cut (a cut vector could look older than it is). A peer sending more is refused.
MAX_ENTRIES = 256
#: Longest writer id accepted (p2pdb's tokens are far shorter).
MAX_WRITER_LENGTH = 64
#: Largest counter accepted (JavaScript's safe integers).
MAX_COUNTER = 2**53 - 1

# letters, digits, "_" and "-": short, and nothing JSON must escape
_WRITER = re.compile(rf"[A-Za-z0-9_-]{{1,{MAX_WRITER_LENGTH}}}")


def _bad(message: str) -> ValidationError:
    return ValidationError(message, code="REPLICATION_BAD_VECTOR")


def check_vector(value: object) -> Vector:
    """``value`` as a vector, if it is one within the bounds; else ``ValidationError``
    ``REPLICATION_BAD_VECTOR`` (a peer sent something no p2pdb peer sends)."""
    if not isinstance(value, Mapping):
        raise _bad(f"A causal vector must be an object, got {type(value).__name__}.")
    if len(value) > MAX_ENTRIES:
        raise _bad(f"A causal vector of {len(value)} writers (at most {MAX_ENTRIES}).")
    for writer, counter in value.items():
        if not isinstance(writer, str) or _WRITER.fullmatch(writer) is None:
            raise _bad(
                f"A causal vector's writer must be 1..{MAX_WRITER_LENGTH} letters, digits, "
                "'_' or '-'."
            )
        if type(counter) is not int or not 0 < counter <= MAX_COUNTER:
            raise _bad(f"A causal vector's counter must be an integer in 1..{MAX_COUNTER}.")
    return dict(value)


def compare(a: Vector | None, b: Vector | None) -> Order:
    """How the state with vector ``a`` stands to the state with vector ``b``."""
    if a is None or b is None:
        return "unknown"
    a_le_b = all(b.get(writer, 0) >= counter for writer, counter in a.items())
    b_le_a = all(a.get(writer, 0) >= counter for writer, counter in b.items())
    if a_le_b and b_le_a:
        return "equal"
    if a_le_b:
        return "before"
    if b_le_a:
        return "after"
    return "concurrent"


def merge(a: Vector | None, b: Vector | None) -> Vector | None:
    """The pointwise maximum; ``None`` if either is unknown or the result is too long."""
    if a is None or b is None:
        return None
    out = dict(a)
    for writer, counter in b.items():
        if counter > out.get(writer, 0):
            out[writer] = counter
    return out if len(out) <= MAX_ENTRIES else None


def stored_vector(
    previous: Vector | None, given: Vector | None, new_event: bool, writer: str, counter: int
) -> Vector | None:
    """The vector a write stores over a state whose vector is ``previous``.

    ``new_event`` false: a copy of a replicated state, stored with its own vector ``given``.
    ``new_event`` true: a new state written here (a local write, a resolution, a state from
    a peer without vectors), after ``previous`` and ``given`` (both may be ``None``), as
    ``writer``'s event number ``counter``.
    """
    if not new_event:
        return given
    base = dict(previous) if previous is not None else {}
    if given is not None:
        base = merge(base, given) or {}
    if writer not in base and len(base) >= MAX_ENTRIES:
        return None  # too many writers: no causal information rather than a cut history
    base[writer] = counter
    return base


def state_vector(state: Mapping[str, Any] | None) -> Vector | None:
    """The vector of a stored state (``_meta["vv"]``), ``None`` if it has none."""
    if state is None:
        return None
    meta = state.get("_meta")
    if isinstance(meta, Mapping):
        vector = meta.get("vv")
        if isinstance(vector, dict):
            return vector
    return None


def attach(doc: dict[str, Any], vector: Vector | None) -> dict[str, Any]:
    """A copy of the wire document ``doc`` carrying ``vector`` (for a p2pdb peer)."""
    if vector is None:
        return doc
    return {**doc, "_meta": {"vv": vector}}


def take(doc: Mapping[str, Any]) -> tuple[dict[str, Any], Vector | None]:
    """A wire document without its ``_meta``, and the vector it carried (checked: a bad one
    raises ``ValidationError`` ``REPLICATION_BAD_VECTOR``)."""
    meta = doc.get("_meta")
    if meta is None:
        return dict(doc), None
    clean = {k: v for k, v in doc.items() if k != "_meta"}
    if not isinstance(meta, Mapping) or meta.get("vv") is None:
        return clean, None
    return clean, check_vector(meta["vv"])
