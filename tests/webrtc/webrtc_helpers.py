"""Helpers shared by the WebRTC transport tests (imported as a plain module)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from p2pdb.plugins.replication_webrtc import ConnectionHandler, Peer, PeerMessage

TOPIC = "webrtc-test-topic"
WAIT = 10.0  # generous upper bound for one event on loopback (they take ~0.1 s)


class Events:
    """Queues fed by a handler's observables, with bounded waits."""

    def __init__(self, handler: ConnectionHandler) -> None:
        self.handler = handler
        self.connects: asyncio.Queue[Peer] = asyncio.Queue()
        self.disconnects: asyncio.Queue[Peer] = asyncio.Queue()
        self.messages: asyncio.Queue[PeerMessage] = asyncio.Queue()
        self.errors: asyncio.Queue[Exception] = asyncio.Queue()
        self.completed = asyncio.Event()
        handler.connects.subscribe(self.connects.put_nowait)
        handler.disconnects.subscribe(self.disconnects.put_nowait)
        handler.messages.subscribe(self.messages.put_nowait)
        handler.errors.subscribe(self.errors.put_nowait, on_completed=self.completed.set)

    @staticmethod
    async def _get(queue: asyncio.Queue[Any], within: float) -> Any:
        async with asyncio.timeout(within):
            return await queue.get()

    async def connect(self, within: float = WAIT) -> Peer:
        peer: Peer = await self._get(self.connects, within)
        return peer

    async def disconnect(self, within: float = WAIT) -> Peer:
        peer: Peer = await self._get(self.disconnects, within)
        return peer

    async def message(self, within: float = WAIT) -> PeerMessage:
        message: PeerMessage = await self._get(self.messages, within)
        return message

    async def error(self, within: float = WAIT) -> Exception:
        error: Exception = await self._get(self.errors, within)
        return error


HandlerMaker = Callable[..., Awaitable[tuple[ConnectionHandler, Events]]]
