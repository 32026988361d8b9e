"""The live lane of a channel's outbox: which stream events may go ahead of bulk traffic.

An :class:`~p2pdb.replication.rpc.RpcChannel` sends everything in one FIFO order, which the
fork's checkpoints and its stale-state rule rely on. A live change (a stream event of a few
documents) queued behind a bulk stream event of thousands would wait seconds, so such an
event may be sent at once, beside the queue (a transport interleaves its frames with those
of the message being sent, see :data:`URGENT_SEND`), when every rule below holds:

- it is a stream batch of at most :data:`LIVE_MAX_DOCS` documents and
  :data:`LIVE_MAX_BYTES` bytes, whose document ids the poster gave;
- everything still unsent ahead of it (queued, or being sent) is a request or a stream
  batch with known ids, none of them one of its ids: it never overtakes an answer (a
  ``masterChangesSince`` answer covers the events that arrive before it, by the fork's
  stale-state rule), a ``RESYNC``, or an older state of one of its documents; nor another
  live event sharing a document with it;
- its checkpoint is replaced by the **floor**: the checkpoint of the last stream batch or
  ``masterChangesSince`` answer sent completely in order before it. Everything up to the
  floor reached the other side ahead of it (the channel is ordered), so the fork stores a
  checkpoint that holds even if the connection drops before the overtaken messages arrive;
  they carry their own checkpoints when they do. Without a floor it waits in the queue.

  A transport whose own queue lets urgent frames overtake frames it still holds (aiortc's
  data channel queue, ``sctp_flush.py``) gives the channel a :class:`FlushGauge`: a message
  becomes the floor only once its frames are past that queue, where nothing overtakes them.

Anything else waits in the queue, in order.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Collection, Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "LIVE_MAX_BYTES",
    "LIVE_MAX_DOCS",
    "STREAM_ID",
    "URGENT_SEND",
    "FlushGauge",
    "LiveLane",
    "Outgoing",
    "batch_ids",
    "sound_checkpoint",
]

#: The ``id`` of unsolicited stream events (RxDB's name).
STREAM_ID = "masterChangeStream$"
#: Most documents a stream event may hold to take the live lane.
LIVE_MAX_DOCS = 16
#: Largest stream event (bytes of JSON) that may take the live lane.
LIVE_MAX_BYTES = 64 * 1024

#: True inside a sink's ``send()`` that carries an urgent message (a heartbeat, a live
#: event): a transport that can, puts its frames ahead of waiting bulk frames and does not
#: hold them back for flow control (urgent messages are few and small). The channel sets it
#: in the task that sends the message; other sends see ``False``.
URGENT_SEND: ContextVar[bool] = ContextVar("p2pdb_urgent_send", default=False)


class _Missing:
    """No floor yet."""


_NO_FLOOR = _Missing()


@dataclass(slots=True, eq=False)
class Outgoing:
    """One message of the outbox, its JSON size, and what the live lane knows of it."""

    message: object
    size: int
    #: A stream batch's document ids (``None``: not a batch, or its ids were not given).
    ids: frozenset[str] | None = None

    def overtakable_by(self, ids: Collection[str]) -> bool:
        """A live event holding ``ids`` may be sent ahead of this message."""
        if self.ids is not None:
            return self.ids.isdisjoint(ids)
        return isinstance(self.message, dict) and isinstance(self.message.get("method"), str)


def batch_ids(result: object, primary_key: str) -> list[str] | None:
    """The document ids of a stream batch ``result`` (``None`` if it is not a batch or a
    document has no string id)."""
    documents = result.get("documents") if isinstance(result, dict) else None
    if not isinstance(documents, list):
        return None
    ids = [doc.get(primary_key) if isinstance(doc, dict) else None for doc in documents]
    return ids if all(isinstance(i, str) for i in ids) else None  # type: ignore[return-value]


def sound_checkpoint(message: object) -> object:
    """The checkpoint a completely sent message lets the other side store: that of a stream
    batch or of a ``masterChangesSince`` answer (``_NO_FLOOR`` for anything else)."""
    if not isinstance(message, dict) or "method" in message or "error" in message:
        return _NO_FLOOR
    result = message.get("result")
    if isinstance(result, dict) and isinstance(result.get("documents"), list):
        return result.get("checkpoint", _NO_FLOOR)
    return _NO_FLOOR


class FlushGauge(Protocol):
    """How far a transport took the messages it was given in order (bytes of their frames):
    offered by a transport that sends urgent frames ahead of frames it still queues."""

    def handed(self) -> int:
        """Bytes of in-order frames handed to the transport so far."""
        ...

    def flushed(self) -> int:
        """Of those, the bytes surely past the queue that urgent frames overtake (a lower
        bound: the floor it gives may lag, never lead)."""
        ...


class LiveLane:
    """Decides which stream events of one channel go ahead (see the module docstring).
    ``gauge``: the transport's :class:`FlushGauge`, if urgent frames may overtake frames
    it holds."""

    def __init__(self, gauge: FlushGauge | None = None) -> None:
        self._gauge = gauge
        # checkpoints of messages sent in order whose frames the transport may still hold,
        # with the gauge's ``handed()`` at their end (only with a gauge)
        self._unflushed: deque[tuple[int, object]] = deque()
        self._floor: object = _NO_FLOOR
        self._in_flight: Counter[str] = Counter()  # ids of live events being sent
        #: Live events sent ahead so far.
        self.taken = 0

    @property
    def floor(self) -> object:
        """The checkpoint a live event carries now (``None`` may be a real one; see
        :meth:`has_floor`)."""
        return self._floor if self.has_floor() else None

    def has_floor(self) -> bool:
        """True once a message carrying a sound checkpoint was sent completely (and is past
        the transport's queue, with a gauge)."""
        if self._unflushed:
            assert self._gauge is not None
            flushed = self._gauge.flushed()
            while self._unflushed and self._unflushed[0][0] <= flushed:
                self._floor = self._unflushed.popleft()[1]
        return not isinstance(self._floor, _Missing)

    def sent_in_order(self, entry: Outgoing) -> None:
        """``entry`` was sent completely, in order: its checkpoint is the new floor (once
        its frames are past the transport's queue, with a gauge)."""
        checkpoint = sound_checkpoint(entry.message)
        if isinstance(checkpoint, _Missing):
            return
        if self._gauge is None:
            self._floor = checkpoint
        else:  # one per message the transport may still hold (bounded by its buffer)
            self._unflushed.append((self._gauge.handed(), checkpoint))
            self.has_floor()  # drops those past it

    def live_message(
        self, result: object, ids: Collection[str], size: int, unsent: Iterable[Outgoing]
    ) -> dict[str, Any] | None:
        """The stream event to send at once for ``result`` (its checkpoint replaced by the
        floor), or ``None``: queue it in order."""
        if len(ids) > LIVE_MAX_DOCS or size > LIVE_MAX_BYTES or not self.has_floor():
            return None
        if not isinstance(result, dict) or not isinstance(result.get("documents"), list):
            return None
        if any(doc_id in self._in_flight for doc_id in ids):
            return None
        ahead = False
        for entry in unsent:
            if not entry.overtakable_by(ids):
                return None
            ahead = True
        if not ahead:
            return None  # nothing to overtake: in order is as fast
        self.taken += 1
        return {"id": STREAM_ID, "result": {**result, "checkpoint": self.floor}}

    def started(self, ids: Iterable[str]) -> None:
        """A live event holding ``ids`` is being sent."""
        self._in_flight.update(ids)

    def finished(self, ids: Iterable[str]) -> None:
        """That live event was handed to the transport (or failed)."""
        self._in_flight.subtract(ids)
        self._in_flight += Counter()  # drop the ids at zero
