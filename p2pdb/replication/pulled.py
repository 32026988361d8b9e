"""Rows the pull wrote: what the push need not read again.

The downstream stores a master state together with that same state as the assumed master
state, in one transaction, so a row it wrote differs from nothing the upstream compares it
with until the document changes again, which gives it a new revision. The upstream walks
the collection's change sequence for states that differ from their assumed master states;
rows still holding a revision the pull wrote are passed over unread (finding them equal
one by one took about a third of a fork's CPU during a bulk pull).

Only a shortcut: an id forgotten (the bound, a restart) or a revision that moved on is read
and compared as before.
"""

from __future__ import annotations

__all__ = ["MAX_NOTED", "PulledRevisions"]

#: Most revisions remembered; past it they are all forgotten (about 100 bytes each).
MAX_NOTED = 100_000


class PulledRevisions:
    """The revision the pull last wrote, by document id, until the push walks past it.

    :meth:`note` may run in the storage's writer thread and :meth:`passes` on the event
    loop: each is one dictionary operation, atomic in CPython."""

    def __init__(self, limit: int = MAX_NOTED) -> None:
        self._revisions: dict[str, str] = {}
        self._limit = limit

    def __len__(self) -> int:
        return len(self._revisions)

    def note(self, doc_id: str, revision: str) -> None:
        """The pull wrote ``revision`` of ``doc_id`` with it as its assumed master state."""
        if len(self._revisions) >= self._limit:
            self._revisions.clear()  # what is forgotten is read as before
        self._revisions[doc_id] = revision

    def holds(self, doc_id: str, revision: str) -> bool:
        """Whether the row ``(doc_id, revision)`` is the pull's (remembered still)."""
        noted = self._revisions.get(doc_id)
        return noted is not None and noted == revision

    def passes(self, doc_id: str, revision: str) -> bool:
        """Whether the row ``(doc_id, revision)`` is the pull's and need not be read; the
        id is forgotten either way (the walk is past it)."""
        noted = self._revisions.pop(doc_id, None)
        return noted is not None and noted == revision
