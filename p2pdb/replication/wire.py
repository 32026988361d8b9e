"""RxDB 17's replication protocol over an :class:`~p2pdb.replication.rpc.RpcChannel`.

The fork calls the master's ``masterChangesSince(checkpoint, batchSize)`` and
``masterWrite(rows)``; the master pushes ``{documents, checkpoint}`` batches or ``"RESYNC"``
as stream events. This module turns those messages into a
:class:`~p2pdb.replication.ReplicationHandler` for the fork (:class:`RemoteMaster`) and
serves them from any handler on the master side (:func:`answer_request`), checking every
untrusted value. It imports no network library.

Writing a transport (see ``plugins/replication_webrtc/session.py``):

1. Implement :class:`~p2pdb.replication.rpc.MessageSink`: ``async send(message)`` delivers
   one message, in call order, and raises :class:`~p2pdb.errors.PeerError` when the other
   side is gone. If the transport's messages differ from RxDB's WebRTC shapes
   (``{id, method, params}``, ``{id, result[, error]}``, ``{id: STREAM_ID, result}``), map
   them in ``send`` and, the other way, before :meth:`RpcChannel.receive`.
2. Make an ``RpcChannel(sink, label=..., token=..., codes=...)`` with the transport's own
   :class:`~p2pdb.replication.rpc.WireErrorCodes` (documented in docs/errors.md),
   ``await channel.start()``, and hand every incoming message to ``channel.receive()``:
   it resolves answers itself and returns a :class:`Request` or a :class:`StreamEvent`
   (or raises a ``protocol_violation`` PeerError: drop the other side).
3. Fork side: ``replicate(collection, RemoteMaster(channel, stream), ...)`` where ``stream``
   is a Subject fed with ``parse_stream_event(event.result, codes)``. A handler of your own
   that wraps ``RemoteMaster`` returns ``in_arrival_order(stream)`` from its ``stream()``
   (the fork's stale-state rule depends on it).
   Master side: ``await answer_request(channel, handler, request)`` for requests whose
   method is in :data:`MASTER_METHODS`, and ``channel.post_event(stream_event_json(item))``
   for every item of ``handler.stream()`` (starting with ``RESYNC``).
4. ``await channel.close()`` when the other side is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import reactivex
from reactivex import Observable
from reactivex.abc import DisposableBase, ObserverBase, SchedulerBase

from ..errors import P2PDBError, PeerError, ValidationError
from .limits import PeerLimits, json_size, value_too_deep
from .protocol import RESYNC, ChangesBatch, ReplicationHandler, Resync, WriteRow
from .revs import DOCS_METHOD, HAVE_METHOD, REVS_METHODS, parse_ids, parse_stubs, speaks_revs
from .rpc import STREAM_ID, WIRE_CODES, Request, RpcChannel, StreamEvent, WireErrorCodes

__all__ = [
    "MASTER_METHODS",
    "MAX_BATCH",
    "STREAM_ID",
    "RemoteMaster",
    "Request",
    "StreamEvent",
    "answer_request",
    "changes_to_json",
    "check_checkpoint",
    "in_arrival_order",
    "parse_changes",
    "parse_stream_event",
    "parse_write_rows",
    "rows_to_json",
    "serve_request",
    "stream_event_json",
]

#: The methods a master answers (RxDB's names). Between p2pdb peers that agreed on the
#: revs-diff extension a transport also routes :data:`~p2pdb.replication.revs.REVS_METHODS`
#: to :func:`answer_request` (else they stay unknown methods, as before).
MASTER_METHODS = frozenset({"masterChangesSince", "masterWrite"})
#: The largest batch the other side may ask for or push at once.
MAX_BATCH = 10_000


#: What a fork accepts from a master unless told otherwise.
DEFAULT_LIMITS = PeerLimits()


def _violation(codes: WireErrorCodes, message: str) -> PeerError:
    return PeerError(message, code=codes.protocol_violation)


def check_checkpoint(
    checkpoint: object, codes: WireErrorCodes = WIRE_CODES, limits: PeerLimits = DEFAULT_LIMITS
) -> object:
    """``checkpoint`` from a master, if within ``limits`` (``max_depth``,
    ``max_checkpoint_bytes``); else the ``over_limit`` PeerError: a fork stores the
    master's checkpoint as it is, so an outsized one is refused before anything is written.
    """
    if value_too_deep(checkpoint, limits.max_depth):
        raise PeerError(
            f"The master sent a checkpoint nested deeper than {limits.max_depth}; refused.",
            code=codes.over_limit,
            limit="max_depth",
        )
    size = json_size(checkpoint)
    if size > limits.max_checkpoint_bytes:
        raise PeerError(
            f"The master sent a checkpoint of {size} bytes (at most "
            f"{limits.max_checkpoint_bytes}); refused.",
            code=codes.over_limit,
            limit="max_checkpoint_bytes",
            size=size,
        )
    return checkpoint


# -- conversions between the handler's types and the JSON on the wire ----------------------


def changes_to_json(batch: ChangesBatch) -> dict[str, Any]:
    """A batch as RxDB sends it: ``{documents, checkpoint}``."""
    return {"documents": batch.documents, "checkpoint": batch.checkpoint}


def stream_event_json(item: ChangesBatch | Resync) -> object:
    """The ``result`` of a stream event: a batch's JSON or ``"RESYNC"``."""
    return changes_to_json(item) if isinstance(item, ChangesBatch) else item


def rows_to_json(rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
    """Write rows as RxDB sends them: ``{newDocumentState, assumedMasterState?}``."""
    wire = []
    for row in rows:
        item: dict[str, Any] = {"newDocumentState": row.new_document_state}
        if row.assumed_master_state is not None:
            item["assumedMasterState"] = row.assumed_master_state
        wire.append(item)
    return wire


def parse_changes(
    result: object, codes: WireErrorCodes = WIRE_CODES, limits: PeerLimits = DEFAULT_LIMITS
) -> ChangesBatch:
    """A ``masterChangesSince`` answer as a batch (``bad_answer`` PeerError if it has no
    documents list, ``over_limit`` for an outsized checkpoint, see
    :func:`check_checkpoint`; the documents are validated by the fork on write)."""
    if not isinstance(result, dict) or not isinstance(result.get("documents"), list):
        raise PeerError(
            "The peer answered masterChangesSince without a documents list.",
            code=codes.bad_answer,
        )
    return ChangesBatch(
        result["documents"], check_checkpoint(result.get("checkpoint"), codes, limits)
    )


def parse_stream_event(
    result: object, codes: WireErrorCodes = WIRE_CODES, limits: PeerLimits = DEFAULT_LIMITS
) -> ChangesBatch | Resync:
    """A stream event's ``result`` as a batch or RESYNC (``protocol_violation`` if neither,
    ``over_limit`` for an outsized checkpoint, see :func:`check_checkpoint`)."""
    if result == RESYNC:
        return RESYNC
    if isinstance(result, dict) and isinstance(result.get("documents"), list):
        return ChangesBatch(
            result["documents"], check_checkpoint(result.get("checkpoint"), codes, limits)
        )
    raise _violation(codes, "A stream event that is neither RESYNC nor a batch.")


def parse_write_rows(params: object, codes: WireErrorCodes = WIRE_CODES) -> list[WriteRow]:
    """The rows of untrusted ``masterWrite`` params ``[rows]`` (at most :data:`MAX_BATCH`);
    raises the ``protocol_violation`` PeerError for anything else."""
    if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], list):
        raise _violation(codes, "masterWrite takes [rows].")
    rows = params[0]
    if len(rows) > MAX_BATCH:
        raise _violation(codes, f"masterWrite with {len(rows)} rows; at most {MAX_BATCH}.")
    parsed = []
    for row in rows:
        new = row.get("newDocumentState") if isinstance(row, dict) else None
        assumed = row.get("assumedMasterState") if isinstance(row, dict) else None
        if not isinstance(new, dict) or not (assumed is None or isinstance(assumed, dict)):
            raise _violation(codes, "Each masterWrite row needs a newDocumentState object.")
        parsed.append(WriteRow(new, assumed))
    return parsed


# -- the fork's side -----------------------------------------------------------------------


class RemoteMaster:
    """A :class:`~p2pdb.replication.ReplicationHandler` whose calls are requests over
    ``rpc``; ``stream`` carries the master's stream events (fed by the transport);
    ``limits`` bound what the master's answers may hold (its checkpoints). ``causal``: the
    transport knows the master is a p2pdb peer, so documents carry causal vectors both ways
    (``p2pdb.replication.causal_order``); never for an RxDB peer."""

    def __init__(
        self,
        rpc: RpcChannel,
        stream: Observable[ChangesBatch | Resync],
        limits: PeerLimits = DEFAULT_LIMITS,
        *,
        causal: bool = False,
        revs: bool = False,
    ) -> None:
        self.rpc = rpc
        self.limits = limits
        #: Documents carry causal vectors (``_meta.vv``) both ways.
        self.causal = causal
        #: The revs-diff extension is agreed (``p2pdb.replication.revs``; needs ``causal``).
        self.revs = revs and causal
        self._stream = stream

    def with_causal_order(self) -> RemoteMaster:
        """Itself: whether vectors travel was settled by the transport (``causal``)."""
        return self

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        """Ask the master for the changes after ``checkpoint``."""
        result = await self.rpc.request("masterChangesSince", [checkpoint, batch_size])
        return parse_changes(result, self.rpc.codes, self.limits)

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        """Push ``rows``; return the master's conflicting states."""
        result = await self.rpc.request("masterWrite", [rows_to_json(rows)])
        if not isinstance(result, list):
            raise self.rpc.error(
                "bad_answer", "The peer answered masterWrite without a list of conflicts."
            )
        return result

    async def docs(self, ids: list[str]) -> list[dict[str, Any]]:
        """Ask the master for the current states of ``ids`` (``p2pdbDocs``)."""
        return await self._list(DOCS_METHOD, ids)

    async def have(self, stubs: list[dict[str, Any]]) -> list[str]:
        """Ask the master which of ``stubs`` it holds exactly (``p2pdbHave``)."""
        return await self._list(HAVE_METHOD, stubs)

    async def _list(self, method: str, items: list[Any]) -> list[Any]:
        if not self.revs:
            raise self.rpc.error("protocol_violation", f"{method} was not agreed with the peer.")
        result = await self.rpc.request(method, [items])
        if not isinstance(result, list):
            raise self.rpc.error("bad_answer", f"The peer answered {method} without a list.")
        return result

    def stream(self) -> Observable[ChangesBatch | Resync]:
        """The master's stream events, in their order of arrival relative to the answers
        (see :func:`in_arrival_order`)."""
        return in_arrival_order(self._stream)


def in_arrival_order(
    stream: Observable[ChangesBatch | Resync],
) -> Observable[ChangesBatch | Resync]:
    """``stream`` with each event handed on one loop step after it arrived.

    Every transport's ``stream()`` must go through this. The fork numbers answers and stream
    events in the order they reach it (its stale-state rule). An answer reaches the fork's
    task only when that task resumes, one loop step after the transport resolved the
    request; an event that arrived right behind the answer, in the same burst, would
    otherwise be numbered first and taken for one the answer covers, and the write it
    carries skipped. Deferring each event by one step (FIFO, after the task's wake-up)
    keeps the order of arrival.
    """

    def subscribe(
        observer: ObserverBase[ChangesBatch | Resync], scheduler: SchedulerBase | None = None
    ) -> DisposableBase:
        loop = asyncio.get_running_loop()

        def on_next(item: ChangesBatch | Resync) -> None:
            loop.call_soon(observer.on_next, item)

        def on_error(error: Exception) -> None:
            loop.call_soon(observer.on_error, error)

        def on_completed() -> None:
            loop.call_soon(observer.on_completed)

        return stream.subscribe(on_next, on_error, on_completed)

    return reactivex.create(subscribe)


# -- the master's side ---------------------------------------------------------------------


async def serve_request(
    handler: ReplicationHandler,
    method: str,
    params: object,
    codes: WireErrorCodes = WIRE_CODES,
) -> Any:
    """Check an untrusted master request and call ``handler``; returns the JSON result.

    Raises the ``protocol_violation`` PeerError for an unknown method or malformed params;
    the handler's own errors (a :class:`ValidationError` for invalid documents) pass through.
    """
    if method == "masterChangesSince":
        if not isinstance(params, list) or len(params) != 2:
            raise _violation(codes, "masterChangesSince takes [checkpoint, batchSize].")
        checkpoint, batch_size = params
        if type(batch_size) is not int or not 0 < batch_size <= MAX_BATCH:
            raise _violation(codes, f"batchSize must be an integer in 1..{MAX_BATCH}.")
        return changes_to_json(await handler.changes_since(checkpoint, batch_size))
    if method == "masterWrite":
        return await handler.write(parse_write_rows(params, codes))
    if method in REVS_METHODS and speaks_revs(handler):
        if method == DOCS_METHOD:
            return await handler.docs(parse_ids(params, codes))
        # each stub is checked by the handler (ValidationError REPLICATION_BAD_STUB)
        return await handler.have(parse_stubs(params, codes))
    raise _violation(codes, f"Unknown method {method!r}.")


async def answer_request(rpc: RpcChannel, handler: ReplicationHandler, request: Request) -> Any:
    """Serve ``request`` with :func:`serve_request` and queue the answer; returns the result.

    Every failure is answered with the error, then raised: a :class:`PeerError`
    (``protocol_violation``, or ``invalid_data`` for documents failing validation) means the
    other side is hostile or broken, so the transport should drop it; any other
    :class:`P2PDBError` is our side failing (a closed database).
    """
    try:
        result = await serve_request(handler, request.method, request.params, rpc.codes)
    except PeerError as exc:
        exc.parameters.update({k: v for k, v in rpc.context.items() if k not in exc.parameters})
        rpc.answer_error(request.id, exc)
        raise
    except ValidationError as exc:
        exc.parameters.update({k: v for k, v in rpc.context.items() if k not in exc.parameters})
        rpc.answer_error(request.id, exc)
        raise rpc.error("invalid_data", f"{rpc.label} sent invalid data: {exc.message}") from exc
    except P2PDBError as exc:
        rpc.answer_error(request.id, exc)
        raise
    rpc.answer(request.id, result)
    return result
