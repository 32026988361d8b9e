"""Helpers for the websocket replication tests: an error collector and a raw client."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from reactivex import Observable
from websockets.asyncio.client import ClientConnection, connect

from p2pdb.errors import P2PDBError

WAIT = 10.0


class Errors:
    """Collects the errors of a stream; ``await wait(code)`` for the first with that code."""

    def __init__(self, stream: Observable[P2PDBError]) -> None:
        self.seen: list[P2PDBError] = []
        self._added = asyncio.Event()
        stream.subscribe(on_next=self._add)

    def _add(self, error: P2PDBError) -> None:
        self.seen.append(error)
        self._added.set()

    def codes(self) -> list[str]:
        return [e.code for e in self.seen]

    async def wait(self, code: str, within: float = WAIT) -> P2PDBError:
        async with asyncio.timeout(within):
            while True:
                for error in self.seen:
                    if error.code == code:
                        return error
                self._added.clear()
                await self._added.wait()


class RawClient:
    """A websocket client that speaks the protocol by hand (and breaks it on purpose)."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket

    @classmethod
    async def connect(cls, url: str, **kwargs: Any) -> RawClient:
        return cls(await connect(url, max_size=None, **kwargs))

    async def send(self, message: object) -> None:
        await self.socket.send(orjson.dumps(message).decode())

    async def recv(self, within: float = WAIT) -> dict[str, Any]:
        async with asyncio.timeout(within):
            result: dict[str, Any] = orjson.loads(await self.socket.recv())
            return result

    async def request(
        self, method: str, params: list[Any], collection: str = "todos", request_id: str = "r1"
    ) -> dict[str, Any]:
        """Send a request; the first message with its id (stream events are skipped)."""
        await self.send(
            {"id": request_id, "collection": collection, "method": method, "params": params}
        )
        while True:
            message = await self.recv()
            if message.get("id") == request_id:
                return message

    async def closed_with(self, within: float = WAIT) -> int | None:
        """Wait until the server closes the connection; the close code it sent."""
        async with asyncio.timeout(within):
            await self.socket.wait_closed()
        return self.socket.close_code

    async def close(self) -> None:
        await self.socket.close()
