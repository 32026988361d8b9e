"""The order in which things reach a fork from its master, and the turns that keep a pull
and a push from interleaving: what decides which master states are stale."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from .turns import PersistTurns

__all__ = ["FORGET_AFTER", "Arrivals"]

Doc = dict[str, Any]
#: Answered pushes remembered before the old ones are dropped.
FORGET_AFTER = 1000


class Arrivals:
    """Arrival numbers of everything from the master, and the pushes they are compared with.

    Everything that reaches us from the master gets an arrival number. The master sends
    stream events and answers in order (an ordered channel does), so:

    - a stream event that arrived before the answer of a pull is covered by the pull's
      result (the master read its state after sending the event);
    - a master state that arrived before the answer to a push of the same document may
      predate that push (or not: the master may have served it after applying the push).
      It is not applied, and the checkpoint does not move past it (nor does a later
      stream batch's): the batch is pulled again, now after the push's answer.

    Applying such stale states would roll the fork back, and in a mesh another replication
    would then push the rolled-back state on as a new write; skipping them for good would
    lose the newer ones.

    The other way round, a conflict answer may be older than a master state that arrived
    while the push was in flight: RxDB's master reads the state it answers with before it
    writes, unserialized with its other writes, so it can stream a newer state and then
    answer with the one it read before (seen in a three-peer mesh: RxDB answered one fork's
    push with the old state 50 ms after it had streamed another fork's newer one).
    :meth:`landed` names the documents of which a state arrived during the push; the fork
    asks again instead of resolving such an answer (``master_wins`` would write the old
    state back as a new revision).
    """

    def __init__(self) -> None:
        self._count = itertools.count()
        #: The arrival number of the last pull's answer (-1: none yet).
        self.last_pull_end = -1
        self._pushed_at: dict[str, int] = {}
        self._pushed_state: dict[str, Doc] = {}  # what that push sent
        #: Documents in a push in flight -> whether a master state of one arrived meanwhile.
        self._flying: dict[str, bool] = {}
        #: Set when a newer replication with the same id started on the same collection
        #: (a transport's new session while the old one still closes): what reaches this
        #: one may predate the newer one's pushes, which its bookkeeping never saw, so it
        #: applies nothing more.
        self.superseded = False
        #: Taken while one direction reads and updates documents and assumed master states:
        #: a push in flight and a pull must never interleave (pushes may, see .turns).
        self.turns = PersistTurns()

    def next(self) -> int:
        """The arrival number of something that just arrived (a stream item, an answer)."""
        return next(self._count)

    def pull_answered(self) -> int:
        """A pull's answer arrived: its number, which stream events up to it are covered by."""
        self.last_pull_end = arrival = self.next()
        return arrival

    def push_answered(self, pushed: Iterable[tuple[str, Doc]]) -> None:
        """A push's answer arrived for these ``(id, wire state sent)`` pairs."""
        answered_at = self.next()
        pushed_at = self._pushed_at
        for doc_id, state in pushed:
            pushed_at.pop(doc_id, None)  # to the end: the dict stays in answer order
            pushed_at[doc_id] = answered_at
            self._pushed_state[doc_id] = state

    def flying(self, ids: Iterable[str]) -> None:
        """A push of these documents goes out (a document is in one push at a time)."""
        for doc_id in ids:
            self._flying[doc_id] = False

    def seen(self, ids: Iterable[object]) -> None:
        """Master states of these documents arrived (a stream event, a pull's answer)."""
        if self._flying:
            for doc_id in ids:
                if isinstance(doc_id, str) and doc_id in self._flying:
                    self._flying[doc_id] = True

    def landed(self, ids: Iterable[str]) -> set[str]:
        """The push of ``ids`` was answered: those of which a master state arrived while it
        was in flight (a conflict answer for them may be older than that state)."""
        return {doc_id for doc_id in ids if self._flying.pop(doc_id, False)}

    def pushed_after(self, doc_id: str, arrival: int) -> bool:
        """True if a push of ``doc_id`` was answered after ``arrival``: a master state of it
        that arrived then may predate that push."""
        return self._pushed_at.get(doc_id, -1) > arrival

    def last_pushed(self, doc_id: str) -> Doc | None:
        """The wire state of ``doc_id`` that the last answered push sent."""
        return self._pushed_state.get(doc_id)

    def forget_before(self, arrival: int) -> None:
        """Bound the memory of pushes: later arrivals are never older than ``arrival``."""
        if len(self._pushed_at) > FORGET_AFTER:
            # in answer order (see push_answered): the old ones lead, and only they are read
            old = list(
                itertools.takewhile(lambda k: self._pushed_at[k] <= arrival, self._pushed_at)
            )
            for doc_id in old:
                del self._pushed_at[doc_id]
                del self._pushed_state[doc_id]
