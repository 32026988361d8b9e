"""The typed options of a replication: one frozen dataclass, written out once.

``replicate(todos, handler, "main", batch_size=500)`` and
``replicate(todos, handler, "main", ReplicationOptions(batch_size=500))`` mean the same: the
keyword forms are checked against :class:`ReplicationOptionsChanges`, which mirrors the
dataclass's fields (tests/test_replication_options.py fails when the two drift).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from ..errors import ValidationError
from .access import Modifier

__all__ = ["ReplicationOptions", "ReplicationOptionsChanges", "merge_options"]


@dataclass(frozen=True, slots=True)
class ReplicationOptions:
    """How a :class:`~p2pdb.replication.ReplicationState` replicates; every field has a
    default, so ``ReplicationOptions()`` is a live two-way replication.

    Raises :class:`~p2pdb.errors.ValidationError` ``REPLICATION_BAD_BATCH_SIZE`` when
    ``batch_size`` is not a positive integer, ``REPLICATION_BAD_RETRY_DELAY`` unless
    ``0 < retry_delay <= max_retry_delay``.
    """

    #: Pull the master's changes into the collection (``False``: push only).
    pull: bool = True
    #: Push the collection's changes to the master (``False``: pull only).
    push: bool = True
    #: Keep following both sides after the first full pass (``False``: one pass each way).
    live: bool = True
    #: Documents per ``changes_since`` call and per ``write`` call.
    batch_size: int = 100
    #: Seconds before the first retry of a failing direction; doubles after each failure.
    retry_delay: float = 0.5
    #: The cap of that doubling delay, in seconds (jitter of x0.75 to x1.25 on top).
    max_retry_delay: float = 15.0
    #: Partial replication: a Mango selector on the collection's documents. Only matching
    #: documents enter by pull or leave by push; a document either side already shares
    #: keeps following, also once it stops matching (docs/replication.md).
    selector: Mapping[str, Any] | None = None
    #: RxDB's ``pull.modifier``: transforms each master state on its way in (conflict
    #: answers included); ``None`` drops it. May be async.
    pull_modifier: Modifier | None = None
    #: RxDB's ``push.modifier``: transforms each pushed state (and its assumed master
    #: state) on its way out; ``None`` leaves the row unsent. May be async.
    push_modifier: Modifier | None = None

    def __post_init__(self) -> None:
        if type(self.batch_size) is not int or self.batch_size < 1:
            raise ValidationError(
                f"batch_size must be a positive integer, got {self.batch_size!r}.",
                code="REPLICATION_BAD_BATCH_SIZE",
            )
        delays = (self.retry_delay, self.max_retry_delay)
        if not all(type(d) in (int, float) for d in delays) or not 0 < delays[0] <= delays[1]:
            raise ValidationError(
                f"retry_delay and max_retry_delay must be seconds with 0 < retry_delay <= "
                f"max_retry_delay, got {self.retry_delay!r} and {self.max_retry_delay!r}.",
                code="REPLICATION_BAD_RETRY_DELAY",
                retry_delay=self.retry_delay,
                max_retry_delay=self.max_retry_delay,
            )


class ReplicationOptionsChanges(TypedDict, total=False):
    """The fields of :class:`ReplicationOptions` as keyword arguments (``**changes``)."""

    pull: bool
    push: bool
    live: bool
    batch_size: int
    retry_delay: float
    max_retry_delay: float
    selector: Mapping[str, Any] | None
    pull_modifier: Modifier | None
    push_modifier: Modifier | None


def merge_options(
    options: ReplicationOptions | None, changes: ReplicationOptionsChanges
) -> ReplicationOptions:
    """``options`` (default: ``ReplicationOptions()``) with the keyword ``changes`` applied."""
    base = ReplicationOptions() if options is None else options
    return dataclasses.replace(base, **changes) if changes else base
