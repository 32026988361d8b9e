"""Capped exponential backoff with jitter: the one retry schedule of p2pdb.

Replications, signaling reconnects and peer reconnects all wait ``base * 2**failures``
(capped), scaled by a random factor so that many clients that failed together do not
retry together.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """The delays of one retry loop: call :meth:`next_delay` after each failure and
    :meth:`reset` after a success."""

    __slots__ = ("base", "cap", "failures", "jitter")

    def __init__(
        self, base: float, cap: float, *, jitter: tuple[float, float] = (0.75, 1.25)
    ) -> None:
        if not 0 < base <= cap:
            raise ValueError(f"need 0 < base <= cap, got base={base!r}, cap={cap!r}")
        self.base = base
        self.cap = cap
        self.jitter = jitter
        self.failures = 0  # in a row

    def next_delay(self) -> float:
        """Count one more failure; the seconds to wait before the next attempt."""
        exponent = min(self.failures, 30)  # 2**30 * base is past any cap
        self.failures += 1
        low, high = self.jitter
        delay: float = min(self.cap, self.base * 2**exponent)
        return delay * random.uniform(low, high)

    def reset(self) -> None:
        """A success: the next failure waits ``base`` again."""
        self.failures = 0
