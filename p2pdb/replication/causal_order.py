"""Whether a replication carries causal order (``p2pdb.causal``), and the rules it follows.

Vectors travel only when both ends are p2pdb: a handler that can carry them implements
:class:`CausalOrder`; the fork asks for that form with :func:`negotiate` when it starts. A
:class:`~p2pdb.replication.master.CollectionHandler` always can (p2pdb on both ends, in one
process); a :class:`~p2pdb.replication.wire.RemoteMaster` can when its transport knows the
other side is a p2pdb peer (the WebRTC handshake proved it). Any other handler, an RxDB
peer's included, keeps the plain protocol: its states count as "no causal information".

The rules, on top of RxDB's (``assumed_master_state`` equal to the master's state):

- the master accepts a pushed state that causally **descends** from its own (its vector
  strictly before the pushed one's): a fast-forward, not a conflict;
- a pushed state its own **descends** from is stale: the master answers with its state
  (a conflict answer, as RxDB), and the fork takes it without asking the conflict handler;
- only concurrent states (or states without vectors) go to the conflict handler, whose
  result follows both (merged vectors plus the fork's own write).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..causal import Vector, compare
from .protocol import ReplicationHandler

__all__ = ["CausalOrder", "fast_forward", "negotiate", "speaks_causal", "stale"]


@runtime_checkable
class CausalOrder(Protocol):
    """A handler that can carry causal vectors (``_meta.vv`` on its documents)."""

    #: True when this handler's documents carry vectors.
    causal: bool

    def with_causal_order(self) -> ReplicationHandler:
        """This handler carrying vectors when the other side can (else itself, plain)."""
        ...


def negotiate(handler: ReplicationHandler) -> ReplicationHandler:
    """The form of ``handler`` a p2pdb fork uses: with vectors when it can carry them."""
    if isinstance(handler, CausalOrder):
        return handler.with_causal_order()
    return handler


def speaks_causal(handler: object) -> bool:
    """True when ``handler``'s documents carry vectors."""
    # what isinstance(handler, CausalOrder) checks, without its cost (~30 us a call on
    # Python 3.11, and this is asked for every pulled batch and every push)
    return getattr(handler, "causal", None) is True and callable(
        getattr(handler, "with_causal_order", None)
    )


def fast_forward(stored: Vector | None, pushed: Vector | None) -> bool:
    """The master's rule: the pushed state descends from the stored one (accept it)."""
    return compare(stored, pushed) == "before"


def stale(pushed: Vector | None, real: Vector | None) -> bool:
    """The fork's rule: the master's real state descends from the pushed one (take it)."""
    return compare(pushed, real) == "before"
