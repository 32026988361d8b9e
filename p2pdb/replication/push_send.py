"""Sending a push to the master: ``masterWrite`` batches, all of one push in flight at once,
and their answers read back (conflicts, refused rows, doubtful answers asked again).

Split from :mod:`.upstream`, which decides what to push and stores what the answers say.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..causal import Vector, attach, take
from ..errors import P2PDBError, ReplicationError, ValidationError
from ..tasks import abandon
from .access import apply_modifier, outgoing_rows, refused_ids
from .causal_order import speaks_causal
from .direction import ReplicationContext
from .protocol import WriteRow, to_wire
from .revs import push_missing, speaks_revs

__all__ = ["PushSender", "Vectors", "bad_response"]

Doc = dict[str, Any]
_ASK_AGAIN = 3  # times a doubtful conflict answer is asked again before it is resolved


@dataclass(slots=True)
class Vectors:
    """One push's causal vectors by id: the fork's states and the master's answers."""

    ours: dict[str, Vector | None]
    theirs: dict[str, Vector | None]


def bad_response(message: str) -> ReplicationError:
    """A master's answer that breaks the protocol (``REPLICATION_BAD_RESPONSE``)."""
    return ReplicationError(message, code="REPLICATION_BAD_RESPONSE")


class PushSender:
    """Sends the rows of pushes for one replication (both lanes of :mod:`.upstream`).

    ``relayed``: ids of relayed states among them, asked about first (``revs.py``); the
    upstream adds to it as it reads states and drops them once pushed."""

    def __init__(self, context: ReplicationContext, relayed: set[str]) -> None:
        self.context = context
        self.relayed = relayed

    async def send(self, rows: list[WriteRow], vectors: Vectors) -> tuple[dict[str, Doc], set[str]]:
        """Send the rows in batches, all in flight at once: the master's real states of the
        conflicting ones (in the fork's form, through ``pull_modifier``), and the ids of
        rows left unsent (``push_modifier`` dropped them) or whose conflict state
        ``pull_modifier`` dropped: their assumed master states stay as they were."""
        batch_size = self.context.options.batch_size
        real: dict[str, Doc] = {}
        unsent: set[str] = set()
        batches = [rows[start : start + batch_size] for start in range(0, len(rows), batch_size)]
        if len(batches) <= 1:
            for batch in batches:
                await self._send_batch(batch, vectors, real, unsent)
            return real, unsent
        # distinct documents each: answered in any order, stored together by the caller
        tasks = [
            asyncio.ensure_future(self._send_batch(batch, vectors, real, unsent))
            for batch in batches
        ]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            await abandon(tasks)  # none outlives the push (nothing of it is stored)
            raise
        return real, unsent

    async def _send_batch(
        self, rows: list[WriteRow], vectors: Vectors, real: dict[str, Doc], unsent: set[str]
    ) -> None:
        """Send one batch (asked again for doubtful answers); see :meth:`send`."""
        pk = self.context.collection.schema.primary_key
        chunk, wire = await outgoing_rows(self.context.options.push_modifier, rows, pk, unsent)
        if speaks_causal(self.context.handler):  # p2pdb on both ends: vectors travel
            wire = [
                WriteRow(
                    attach(r.new_document_state, vectors.ours.get(r.new_document_state[pk])),
                    r.assumed_master_state,
                )
                for r in wire
            ]
        for _ in range(_ASK_AGAIN + 1):
            doubtful = await self._send_chunk(chunk, wire, unsent, real, vectors)
            if not doubtful:
                break
            # ask again for those only: the answer is read after that state arrived
            chunk = [r for r in chunk if r.new_document_state[pk] in doubtful]
            wire = [r for r in wire if r.new_document_state[pk] in doubtful]

    async def _send_chunk(
        self,
        chunk: list[WriteRow],
        wire: list[WriteRow],
        unsent: set[str],
        real: dict[str, Doc],
        vectors: Vectors,
    ) -> set[str]:
        """Send one batch; put its conflict answers in ``real``. Returns the ids whose
        answer may be older than a master state that arrived while the push was in flight
        (see :class:`~.arrivals.Arrivals`): to ask again rather than resolve."""
        pk, arrivals = self.context.collection.schema.primary_key, self.context.arrivals
        ids = [row.new_document_state[pk] for row in wire]
        if not ids:
            return set()
        arrivals.flying(ids)
        try:
            answer = await self._write_allowed(chunk, wire, unsent)
        finally:
            seen = arrivals.landed(ids)
        if answer is None:
            return set()
        sent = {row.new_document_state[pk]: row.new_document_state for row in chunk}
        arrivals.push_answered(sent.items())
        for doc_id in sent:  # an earlier answer of a row asked again is replaced
            real.pop(doc_id, None)
        if not isinstance(answer, list):
            raise bad_response("write() must return a list of conflicting documents.")
        for answered in answer:
            if not isinstance(answered, Mapping) or answered.get(pk) not in sent:
                raise bad_response("write() returned a conflict for a document that was not sent.")
            doc_id = answered[pk]
            answered, vectors.theirs[doc_id] = self._take_vector(answered)
            state = await apply_modifier(self.context.options.pull_modifier, dict(answered))
            if state is None:
                unsent.add(doc_id)
            else:
                real[doc_id] = to_wire(state)
        is_equal = self.context.collection.conflict_handler.is_equal
        return {i for i in seen & real.keys() if not is_equal(real[i], sent[i])}

    def _take_vector(self, answered: Mapping[str, Any]) -> tuple[Doc, Vector | None]:
        """A conflict answer without its vector, and the vector (a bad one: a bad answer)."""
        if not speaks_causal(self.context.handler):
            return dict(answered), None
        try:
            return take(answered)
        except ValidationError as exc:
            raise bad_response(f"write() returned a bad causal vector: {exc.message}") from exc

    async def _write_allowed(
        self, chunk: list[WriteRow], wire: list[WriteRow], unsent: set[str]
    ) -> list[Any] | None:
        """``handler.write(wire)``; when the master refuses some rows
        (``REPLICATION_WRITE_REFUSED``: its access rules), report it once, leave those rows
        unsent (nothing of them is stored there) and send the others again, so one refused
        row never blocks the rest. ``None``: every row was refused."""
        pk = self.context.collection.schema.primary_key
        while True:
            try:
                rest = await self._unheld(wire)
                return await self.context.handler.write(rest) if rest else []
            except P2PDBError as exc:
                sent = {row.new_document_state[pk] for row in wire}
                refused = refused_ids(exc) & sent
                if not refused:
                    raise
                self.context.report("up", exc)
                unsent |= refused
                chunk[:] = [r for r in chunk if r.new_document_state[pk] not in refused]
                wire[:] = [r for r in wire if r.new_document_state[pk] not in refused]
                if not wire:
                    return None

    async def _unheld(self, wire: list[WriteRow]) -> list[WriteRow]:
        """``wire`` without the relayed states the master holds exactly (revs.py)."""
        handler, pk = self.context.handler, self.context.collection.schema.primary_key
        if not speaks_revs(handler) or self.context.options.push_modifier is not None:
            return wire
        return await push_missing(handler, wire, self.relayed, pk)
