"""An in-memory transport for the replication wire: run fork and master in one process.

    from p2pdb.replication import collection_handler, replicate
    from p2pdb.replication.testing import WirePipe

    async with WirePipe(collection_handler(master_collection)) as pipe:
        state = replicate(fork_collection, pipe.handler, "over-the-pipe")
        await state.wait_for_in_sync()

:func:`pipe_pair` gives two connected :class:`PipeEnd` sinks (for tests of a channel
alone); :class:`WirePipe` is also the smallest complete transport, a model for real ones.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from reactivex.abc import DisposableBase
from reactivex.subject import Subject

from ..errors import P2PDBError, PeerError
from ..tasks import cancel_and_wait
from .causal_order import negotiate, speaks_causal
from .protocol import RESYNC, ChangesBatch, ReplicationHandler, Resync
from .revs import REVS_METHODS, speaks_revs
from .rpc import WIRE_CODES, Request, RpcChannel, StreamEvent
from .wire import (
    MASTER_METHODS,
    RemoteMaster,
    answer_request,
    parse_stream_event,
    stream_event_json,
)

__all__ = ["PipeEnd", "WirePipe", "pipe_pair"]

Receiver = Callable[[object], None]


class PipeEnd:
    """One end of an in-memory pipe, a :class:`~p2pdb.replication.rpc.MessageSink`.

    ``send`` copies the message through JSON (as a network would) and hands it to the other
    end's ``receiver`` on the next loop iteration, in order. After :meth:`close` of either
    end, ``send`` raises the ``WIRE_PEER_GONE`` PeerError.
    """

    def __init__(self) -> None:
        self.receiver: Receiver | None = None  #: called with each message from the other end
        self.other: PipeEnd | None = None
        self.closed = False
        self.sent: list[object] = []  #: every message sent from this end (for assertions)

    async def send(self, message: object) -> None:
        """Deliver ``message`` to the other end."""
        other = self.other
        if self.closed or other is None or other.closed:
            raise PeerError("The other end of the pipe is closed.", code=WIRE_CODES.peer_gone)
        copy = json.loads(json.dumps(message))
        self.sent.append(copy)
        asyncio.get_running_loop().call_soon(other.deliver, copy)

    def deliver(self, message: object) -> None:
        """Hand a message to this end's receiver (dropped once closed)."""
        if not self.closed and self.receiver is not None:
            self.receiver(message)

    def close(self) -> None:
        """Close this end: nothing more is sent or delivered through it."""
        self.closed = True


def pipe_pair() -> tuple[PipeEnd, PipeEnd]:
    """Two connected pipe ends."""
    a, b = PipeEnd(), PipeEnd()
    a.other, b.other = b, a
    return a, b


class WirePipe:
    """A fork-side handler (``handler``) that reaches ``master`` through the wire: two
    :class:`RpcChannel` over a :func:`pipe_pair`, the master's requests served by
    :func:`~p2pdb.replication.wire.answer_request` and its stream pushed as events.

    ``errors`` collects every error either side raised (protocol violations and failed
    requests). Use ``async with`` or :meth:`start` and :meth:`close`.
    """

    def __init__(self, master: ReplicationHandler, *, request_timeout: float = 10.0) -> None:
        # p2pdb on both ends: causal vectors travel when the master can carry them
        self.master = negotiate(master)
        self.fork_end, self.master_end = pipe_pair()
        self.fork_channel = RpcChannel(
            self.fork_end, label="Pipe master", token="fork", request_timeout=request_timeout
        )
        self.master_channel = RpcChannel(
            self.master_end, label="Pipe fork", token="master", request_timeout=request_timeout
        )
        self._events: Subject[ChangesBatch | Resync] = Subject()
        self.handler = RemoteMaster(
            self.fork_channel,
            self._events,
            causal=speaks_causal(self.master),
            revs=speaks_revs(self.master),
        )
        self.errors: list[Exception] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscription: DisposableBase | None = None

    async def start(self) -> None:
        """Connect both ends and start the master's stream (beginning with RESYNC)."""
        self.fork_end.receiver = self._on_fork_message
        self.master_end.receiver = self._on_master_message
        await self.fork_channel.start()
        await self.master_channel.start()
        self._subscription = self.master.stream().subscribe(
            on_next=lambda item: self.master_channel.post_event(stream_event_json(item))
        )
        self.master_channel.post_event(RESYNC)

    async def __aenter__(self) -> WirePipe:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _on_fork_message(self, message: object) -> None:
        try:
            incoming = self.fork_channel.receive(message)
            if isinstance(incoming, StreamEvent):
                self._events.on_next(parse_stream_event(incoming.result, WIRE_CODES))
            elif isinstance(incoming, Request):
                raise self.fork_channel.error("protocol_violation", "The master sent a request.")
        except PeerError as exc:
            self.errors.append(exc)

    def _on_master_message(self, message: object) -> None:
        try:
            incoming = self.master_channel.receive(message)
        except PeerError as exc:
            self.errors.append(exc)
            return
        if isinstance(incoming, Request):
            revs = incoming.method in REVS_METHODS and speaks_revs(self.master)
            if incoming.method in MASTER_METHODS or revs:
                task = asyncio.get_running_loop().create_task(self._serve(incoming))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                error = self.master_channel.error(
                    "protocol_violation", f"Unknown method {incoming.method!r}."
                )
                self.master_channel.answer_error(incoming.id, error)
                self.errors.append(error)
        elif isinstance(incoming, StreamEvent):
            self.errors.append(
                self.master_channel.error("protocol_violation", "The fork sent a stream event.")
            )

    async def _serve(self, request: Request) -> None:
        try:
            await answer_request(self.master_channel, self.master, request)
        except P2PDBError as exc:
            self.errors.append(exc)

    async def close(self) -> None:
        """Stop both sides; pending requests fail with ``WIRE_PEER_GONE``."""
        if self._subscription is not None:
            self._subscription.dispose()
        self.fork_end.close()
        self.master_end.close()
        await self.fork_channel.close()
        await self.master_channel.close()
        try:
            await cancel_and_wait(self._tasks)
        finally:
            self._events.on_completed()
