"""Requests and answers with one peer over its data channel, in RxDB 17's message format.

- request ``{id, method, params}``; answer ``{id, result}`` or ``{id, result: null, error}``;
  unsolicited stream events ``{id: "masterChangeStream$", result}``.
- Everything we send to a peer goes through one FIFO queue, so the peer receives stream
  events and answers in the order we produced them (the replication's stale-state rule
  relies on that) and one large message never interleaves with another.
- Every request has a timeout; pending requests fail at once when the peer goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

from p2pdb.errors import P2PDBError, PeerError

from .connection import ConnectionHandler, Peer

__all__ = ["STREAM_ID", "PeerChannel"]

log = logging.getLogger("p2pdb.webrtc")

#: The ``id`` of unsolicited stream events (RxDB's name).
STREAM_ID = "masterChangeStream$"

Handler = Callable[[str, list[Any]], Awaitable[Any]]


class PeerChannel:
    """Requests, answers and events with one connected peer."""

    def __init__(
        self,
        connection: ConnectionHandler,
        peer: Peer,
        own_token: str,
        *,
        request_timeout: float = 20.0,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        self.connection = connection
        self.peer = peer
        self.request_timeout = request_timeout
        self._prefix = f"{own_token}|{secrets.token_hex(5)}|"
        self._counter = itertools.count()
        self._issued = 0  # request ids issued so far: "<prefix><n>" with n < this
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._outbox: asyncio.Queue[object] = asyncio.Queue()
        self._urgent: set[asyncio.Task[None]] = set()
        self._sender = asyncio.get_running_loop().create_task(self._send_in_order())
        self._closed = False
        self.last_heard = asyncio.get_running_loop().time()
        self.idle = asyncio.Event()  # set while nothing waits to be sent
        self.idle.set()
        self._on_idle = on_idle  # called each time the queue drains

    # -- sending ---------------------------------------------------------------------------

    def post(self, message: object) -> None:
        """Queue a message for the peer (sent in order, after everything queued before)."""
        if not self._closed:
            self.idle.clear()
            self._outbox.put_nowait(message)

    def post_now(self, message: object) -> None:
        """Send a small message at once, ahead of the queue (its frames interleave with
        those of a large message being sent). Only for messages that carry no replication
        data (``token`` requests and answers: the heartbeats), whose order does not matter:
        behind a large message they would wait for all of it and look like a dead peer."""
        if not self._closed:
            task = asyncio.get_running_loop().create_task(self._send_now(message))
            self._urgent.add(task)
            task.add_done_callback(self._urgent.discard)

    async def _send_now(self, message: object) -> None:
        try:
            await self.connection.send(self.peer, message)
        except PeerError as exc:
            self.fail_pending(exc)

    async def _send_in_order(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self.connection.send(self.peer, message)
            except PeerError as exc:
                self.fail_pending(exc)
                return
            if self._outbox.empty():
                self.idle.set()
                if self._on_idle is not None:
                    self._on_idle()

    async def request(
        self, method: str, params: list[Any], within: float | None = None, *, urgent: bool = False
    ) -> Any:
        """Send a request and wait for its answer (raises PeerError on error or timeout).

        ``urgent``: send it ahead of the queue (see :meth:`post_now`)."""
        if self._closed:
            raise PeerError(
                f"Peer {self.peer.peer_id} is disconnected.", code="WEBRTC_PEER_GONE"
            )
        request_id = f"{self._prefix}{next(self._counter)}"
        self._issued += 1
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = answer
        message = {"id": request_id, "method": method, "params": params}
        if urgent:
            self.post_now(message)
        else:
            self.post(message)
        try:
            async with asyncio.timeout(within or self.request_timeout):
                return await answer
        except TimeoutError:
            raise PeerError(
                f"Peer {self.peer.peer_id} did not answer {method} within "
                f"{within or self.request_timeout} s.",
                code="WEBRTC_REQUEST_TIMEOUT",
                method=method,
                peer_id=self.peer.peer_id,
            ) from None
        finally:
            self._pending.pop(request_id, None)

    def answer(self, request_id: str, result: Any) -> None:
        """Queue the answer to a request of the peer."""
        self.post({"id": request_id, "result": result})

    def answer_error(self, request_id: str, error: BaseException) -> None:
        """Queue an error answer, in RxDB's shape."""
        body = (
            error.to_json()
            if isinstance(error, P2PDBError)
            else {"name": type(error).__name__, "message": str(error)}
        )
        self.post({"id": request_id, "result": None, "error": body})

    # -- receiving -------------------------------------------------------------------------

    def take_answer(self, message: dict[str, Any]) -> bool:
        """Resolve the pending request an answer belongs to.

        A late answer (its request timed out) is dropped; returns False only for an answer
        to a request this channel never sent, which no honest peer produces.
        """
        request_id = message.get("id")
        future = self._pending.get(request_id) if isinstance(request_id, str) else None
        if future is None or future.done():
            if not self._was_issued(request_id):
                return False
            log.debug("dropping an answer nobody waits for from %s", self.peer.peer_id)
            return True
        error = message.get("error")
        if error is not None:
            text = error.get("message") if isinstance(error, dict) else error
            future.set_exception(
                PeerError(
                    f"Peer {self.peer.peer_id} answered with an error: {text}",
                    code="WEBRTC_REMOTE_ERROR",
                    remote_error=error,
                )
            )
        else:
            future.set_result(message.get("result"))
        return True

    def _was_issued(self, request_id: object) -> bool:
        if not isinstance(request_id, str) or not request_id.startswith(self._prefix):
            return False
        number = request_id[len(self._prefix) :]
        return number.isdigit() and len(number) < 20 and int(number) < self._issued

    def heard(self) -> None:
        """Note that a message arrived (the peer is alive)."""
        self.last_heard = asyncio.get_running_loop().time()

    def fail_pending(self, error: PeerError) -> None:
        """Fail every pending request with ``error``."""
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    async def close(self) -> None:
        """Stop sending and fail the pending requests."""
        self._closed = True
        self.fail_pending(
            PeerError(f"Peer {self.peer.peer_id} disconnected.", code="WEBRTC_PEER_GONE")
        )
        for task in (self._sender, *self._urgent):
            task.cancel()
        for task in (self._sender, *self._urgent):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.idle.set()
