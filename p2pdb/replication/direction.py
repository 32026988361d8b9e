"""What the two directions of a replication share: their context and their bookkeeping."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

from ..backoff import Backoff
from .access import DocumentFilter
from .arrivals import Arrivals
from .checkpoints import Checkpoints, Direction
from .fork import ForkCollection
from .options import ReplicationOptions
from .protocol import ReplicationHandler
from .pulled import PulledRevisions

__all__ = ["DirectionTask", "ReplicationContext"]


@dataclass(frozen=True, slots=True)
class ReplicationContext:
    """One replication, as its directions see it."""

    collection: ForkCollection
    handler: ReplicationHandler
    options: ReplicationOptions
    checkpoints: Checkpoints
    arrivals: Arrivals
    #: The ``origin`` of the replication's local writes (on their change events).
    origin: str
    #: Report an error of a direction on ``state.errors`` (it is retried, not raised).
    report: Callable[[Direction, BaseException], None]
    #: Tell the state that a flag changed (wakes ``wait_for_*``, updates ``active``).
    notify: Callable[[], None]
    #: ``options.selector`` compiled for the collection (partial replication).
    filter: DocumentFilter
    #: The revisions the pull wrote, which the push passes over (see :mod:`.pulled`).
    pulled: PulledRevisions = field(default_factory=PulledRevisions)


class DirectionTask(ABC):
    """Pulling or pushing: its body, and the flags ``is_in_sync`` and ``active`` read.

    The state's retry loop runs :meth:`run`; when it raises, the loop sets ``failing``,
    calls :meth:`failed`, reports, waits ``backoff.next_delay()`` and calls :meth:`retry`.
    """

    name: ClassVar[Direction]

    def __init__(self, context: ReplicationContext, enabled: bool) -> None:
        self.context = context
        self.enabled = enabled
        self.busy = False
        self.failing = False
        self.first_done = not enabled  # a disabled direction never holds anything up
        self.backoff = Backoff(context.options.retry_delay, context.options.max_retry_delay)

    def set_busy(self, busy: bool) -> None:
        """Mark the direction working or idle."""
        self.busy = busy
        self.context.notify()

    def succeeded(self) -> None:
        """A step went through: the next failure backs off from the start again."""
        self.backoff.reset()
        if self.failing:
            self.failing = False
            self.context.notify()

    def settled(self) -> bool:
        """Nothing to do now: first pass done, idle, not failing, nothing waiting."""
        return (
            self.first_done
            and not self.busy
            and not self.failing
            and (not self.enabled or not self.pending())
        )

    @abstractmethod
    async def run(self) -> None:
        """The direction's body; returns only when ``live`` is off and its pass is done."""

    @abstractmethod
    def pending(self) -> bool:
        """True when something waits to be pulled or pushed."""

    @abstractmethod
    def failed(self) -> None:
        """:meth:`run` just raised (called before the error is reported)."""

    @abstractmethod
    def retry(self) -> None:
        """The backoff delay after a failure is over: queue the work again."""
