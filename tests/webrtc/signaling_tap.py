"""A tapping WebSocket relay in front of a signaling server: it records every frame both
ways (what a signaling server, or anyone on its path, sees) and can rewrite or inject
frames, as a malicious server would. Imported as a plain module by the signaling tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

Rewrite = Callable[[str, str], list[str]]
"""``rewrite(direction, frame) -> frames to forward``; direction ``"up"`` (client to
server) or ``"down"``."""


@dataclass
class Tap:
    upstream: str
    rewrite: Rewrite | None = None
    frames: list[tuple[str, str]] = field(default_factory=list)
    """Every frame seen, ``(direction, text)``, in order."""
    links: list[tuple[ServerConnection, ClientConnection]] = field(default_factory=list)
    _server: Server | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"ws://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def seen(self, direction: str | None = None) -> str:
        """All frames (of one direction) joined, to search in."""
        return "\n".join(text for way, text in self.frames if direction in (None, way))

    async def start(self) -> Tap:
        self._server = await serve(self._relay, "127.0.0.1", 0)
        return self

    async def __aenter__(self) -> Tap:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def inject(self, index: int, direction: str, text: str) -> None:
        """Send ``text`` on link ``index`` towards the server (``up``) or the client."""
        client_side, server_side = self.links[index]
        await (server_side if direction == "up" else client_side).send(text)

    async def _relay(self, client: ServerConnection) -> None:
        async with connect(self.upstream) as server:
            self.links.append((client, server))

            async def pump(source: object, sink: object, direction: str) -> None:
                assert isinstance(source, ServerConnection | ClientConnection)
                assert isinstance(sink, ServerConnection | ClientConnection)
                async for raw in source:
                    text = raw if isinstance(raw, str) else raw.decode()
                    self.frames.append((direction, text))
                    for out in self.rewrite(direction, text) if self.rewrite else [text]:
                        await sink.send(out)

            up = asyncio.create_task(pump(client, server, "up"))
            down = asyncio.create_task(pump(server, client, "down"))
            with contextlib.suppress(ConnectionClosed):
                await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
            for task in (up, down):
                task.cancel()
            await asyncio.wait([up, down])
