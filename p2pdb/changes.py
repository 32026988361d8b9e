"""Change events: what a committed write did to one document."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["LOCAL", "ChangeEvent", "Operation"]

Operation = Literal["INSERT", "UPDATE", "DELETE"]

#: ``origin`` of a write made by the application itself.
LOCAL = "local"


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~1 µs more per event
class ChangeEvent:
    """One document written by one committed transaction.

    ``document`` and ``previous`` are stored states (user fields plus ``_deleted``, ``_rev``
    and ``_meta``); ``previous`` is ``None`` for a new document, and for writes made by
    another process (their previous state is no longer on disk). ``origin`` is
    :data:`LOCAL`, ``"<collection>:<replication_id>"`` for a replication's writes
    as a fork, or the ``origin`` given to the master handler that wrote it. ``seq`` is the
    write's position in the database's change sequence.
    """

    operation: Operation
    collection: str
    id: str
    document: dict[str, Any]
    previous: dict[str, Any] | None
    origin: str
    seq: int

    @staticmethod
    def operation_for(deleted: bool, previous: dict[str, Any] | None) -> Operation:
        """INSERT, UPDATE or DELETE for a new state over ``previous``."""
        if deleted:
            return "DELETE"
        if previous is None or previous.get("_deleted"):
            return "INSERT"
        return "UPDATE"
