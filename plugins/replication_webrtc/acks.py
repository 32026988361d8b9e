"""What a fork acknowledged to its master: the rounds behind the master's side of
``pool.wait_for_in_sync()``.

The master asks with a ``RESYNC`` stream event (a round); the fork answers with a
``masterChangesSince`` request, whose checkpoint is the one it stored: it holds everything
up to there. Which request answers which round rests on two orders: the channel delivers in
order, and a fork asks for one batch at a time (each request after the answer to the one
before). So a request answers round ``r`` only if the answer before it went out after round
``r``'s ``RESYNC``: the fork received that ``RESYNC`` first, before sending this request.

The first request after a ``RESYNC`` may have crossed it (the fork sent it before seeing
the ``RESYNC``: the next request of a pull under way, or the start of another); it answers
no new round, and a second ``RESYNC`` after its answer makes the fork ask once more. A
p2pdb fork holds a ``RESYNC``, and pauses its pulls, until its pending pushes went out
(``p2pdb.replication.state``), so a request that answers a round also shows that it pushed
what it held then; an RxDB fork promises the documents only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

__all__ = ["AckRounds"]


class AckRounds:
    """The master's count of ``RESYNC`` rounds and of what its fork acknowledged."""

    def __init__(self, post_resync: Callable[[], None]) -> None:
        self._post_resync = post_resync
        #: Rounds asked so far.
        self.asked = 0
        #: Rounds asked before the latest ``masterChangesSince`` answer went out.
        self.answered = 0
        #: The checkpoint (sequence number) the fork last asked from, and the round that
        #: request answered.
        self.acked_seq = 0
        self.acked_round = 0
        self._own: deque[tuple[int, int]] = deque(maxlen=64)  # see own_push

    def own_push(self, after: int, to: int) -> None:
        """A push of the fork took every sequence number in ``(after, to]``: it holds
        those states (its own), though no request of it may follow to say so (they come
        back to it as an empty stream batch). The last 64 are kept."""
        self._own.append((after, to))

    def held(self) -> int:
        """The fork holds everything up to here: what it acknowledged, and its own pushes
        right after that."""
        held = self.acked_seq
        for after, to in sorted(self._own):
            if held >= after:
                held = max(held, to)
        return held

    def ask(self) -> int:
        """Post a ``RESYNC``; return the round's number, for :meth:`since`."""
        self.asked += 1
        self._post_resync()
        return self.asked

    def arrived(self) -> int:
        """A ``masterChangesSince`` arrived: the rounds it answers (pass them on to
        :meth:`served`)."""
        return self.answered

    def served(self, rounds: int, checkpoint_seq: int | None) -> None:
        """Its answer was queued (``checkpoint_seq``: the sequence number it asked from,
        ``None`` if unreadable). Call it right after queueing, with nothing awaited between."""
        if checkpoint_seq is not None:
            self.acked_seq = max(self.acked_seq, checkpoint_seq)
            self.acked_round = max(self.acked_round, rounds)
        crossed = rounds < self.asked
        self.answered = self.asked
        if crossed:  # the fork may have no pull left to run: have it ask once more
            self._post_resync()

    def since(self, round_number: int, seq: int) -> bool:
        """The fork answered round ``round_number`` (or a later one) with a checkpoint at
        or past ``seq``."""
        return self.acked_round >= round_number and self.acked_seq >= seq
