"""A WebSocket signaling server speaking RxDB 17.6's simple-peer protocol.

Frames (JSON text)::

    S→C  {"type": "init", "yourPeerId": "<12 a-z>"}            on connect
    C→S  {"type": "join", "room": "<6-99 UTF-16 units>"}
    S→C  {"type": "joined", "otherPeerIds": [...]}             to every member, on each join/leave
    C→S→C {"type": "signal", "room", "senderPeerId", "receiverPeerId", "data", "connectionId"?}
    C→S  {"type": "ping"}

Stricter than RxDB's server, compatible with its clients: a signal is relayed only
between two members of the room it names, messages are size-capped, and every
rejected frame closes the socket with code 1008 and a reason (1009 for size).
The server keeps nothing but room membership and liveness times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from p2pdb.errors import ValidationError
from p2pdb.tokens import random_token

__all__ = ["PEER_ID_LENGTH", "SignalingServer", "is_valid_room", "start_signaling_server"]

logger = logging.getLogger("p2pdb.webrtc.signaling_server")

PEER_ID_LENGTH = 12
"""Length of the peer ids the server hands out (RxDB: ``randomToken(12)``)."""
MAX_ROOMS_PER_PEER = 64
"""A socket that joins more rooms than this is closed."""
CLOSE_POLICY_VIOLATION = 1008
_SWEEP_INTERVAL_MAX = 5.0


def is_valid_room(room: object) -> bool:
    """True for a room name RxDB accepts: a string of 6-99 UTF-16 code units."""
    if not isinstance(room, str):
        return False
    units = len(room.encode("utf-16-le", "surrogatepass")) // 2
    return 5 < units < 100


@dataclass(eq=False)
class _Member:
    id: str
    socket: ServerConnection
    last_seen: float
    rooms: set[str] = field(default_factory=set)


class SignalingServer:
    """A running signaling server; create it with :func:`start_signaling_server`.

    Use ``async with`` or call :meth:`close`. ``port`` is the bound port (useful
    with port 0) and ``url`` the ``ws://host:port`` address clients connect to.
    """

    def __init__(self, *, host: str, ping_timeout: float) -> None:
        self.host = host
        self._ping_timeout = ping_timeout
        self._members: dict[str, _Member] = {}
        self._rooms: dict[str, dict[str, None]] = {}  # room -> member ids, in join order
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- public ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """The ``ws://host:port`` URL of the server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    def rooms(self) -> dict[str, list[str]]:
        """A snapshot of the rooms and their member ids (for tests and monitoring)."""
        return {room: list(members) for room, members in self._rooms.items()}

    async def serve_forever(self) -> None:
        """Run until cancelled, then close."""
        try:
            await asyncio.Future()
        finally:
            await self.close()

    async def close(self) -> None:
        """Close every connection and stop listening; waits until all is done."""
        if self._closing:
            return
        self._closing = True
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._members.clear()
        self._rooms.clear()
        logger.info("signaling server on %s:%s closed", self.host, self._bound_port())

    async def __aenter__(self) -> SignalingServer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- internals ------------------------------------------------------------------------

    def _bound_port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return self.port

    def _start(self, server: Server) -> None:
        self._server = server
        self._spawn(self._sweep())

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle(self, socket: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        peer_id = random_token(PEER_ID_LENGTH)
        while peer_id in self._members:
            peer_id = random_token(PEER_ID_LENGTH)
        member = _Member(id=peer_id, socket=socket, last_seen=loop.time())
        self._members[peer_id] = member
        logger.info("peer %s connected from %s", peer_id, socket.remote_address)
        try:
            await socket.send(_dumps({"type": "init", "yourPeerId": peer_id}))
            async for raw in socket:
                if self._members.get(peer_id) is not member:
                    return  # evicted meanwhile: its socket is being closed
                member.last_seen = loop.time()
                reason = self._on_frame(member, raw)
                if reason is not None:
                    logger.warning("closing peer %s: %s", peer_id, reason)
                    self._remove(member)
                    await socket.close(CLOSE_POLICY_VIOLATION, reason)
                    return
        except ConnectionClosed as closed:
            logger.info("peer %s disconnected (%s)", peer_id, closed)
        finally:
            self._remove(member)

    def _on_frame(self, member: _Member, raw: str | bytes) -> str | None:
        """Handle one frame; return a close reason if the socket must be closed."""
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return "invalid message: not JSON"
        if not isinstance(message, dict):
            return "invalid message: not a JSON object"
        kind = message.get("type")
        if kind == "ping":
            return None
        if kind == "join":
            return self._join(member, message.get("room"))
        if kind == "signal":
            return self._signal(member, message, raw)
        return f"unknown message type {str(kind)[:40]!r}"

    def _join(self, member: _Member, room: object) -> str | None:
        if not is_valid_room(room):
            return "invalid room: must be a string of 6-99 characters"
        assert isinstance(room, str)
        if room in member.rooms:
            return None
        if len(member.rooms) >= MAX_ROOMS_PER_PEER:
            return f"too many rooms (limit {MAX_ROOMS_PER_PEER})"
        member.rooms.add(room)
        self._rooms.setdefault(room, {})[member.id] = None
        logger.debug("peer %s joined room %r", member.id, room)
        self._announce(room)
        return None

    def _signal(self, member: _Member, message: dict[str, Any], raw: str | bytes) -> str | None:
        if message.get("senderPeerId") != member.id:
            return "spoofed sender"
        room = message.get("room")
        receiver_id = message.get("receiverPeerId")
        if not isinstance(room, str) or room not in member.rooms:
            return "signal to a room the sender has not joined"
        if not isinstance(receiver_id, str):
            return "signal without a receiverPeerId"
        receiver = self._members.get(receiver_id)
        if receiver is None:
            # The receiver left (a benign race with its disconnect): drop the signal.
            logger.debug("dropping signal from %s to departed peer %s", member.id, receiver_id)
            return None
        if room not in receiver.rooms:
            return "signal to a peer outside the room"
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
        broadcast([receiver.socket], text)  # verbatim, without waiting on a slow receiver
        return None

    def _announce(self, room: str) -> None:
        members = self._rooms.get(room)
        if not members or self._closing:
            return
        text = _dumps({"type": "joined", "otherPeerIds": list(members)})
        broadcast([self._members[m].socket for m in members if m in self._members], text)

    def _remove(self, member: _Member) -> None:
        """Forget a member and tell its rooms (idempotent)."""
        if self._members.get(member.id) is not member:
            return
        del self._members[member.id]
        for room in sorted(member.rooms):
            members = self._rooms.get(room)
            if members is None:
                continue
            members.pop(member.id, None)
            if members:
                self._announce(room)
            else:
                del self._rooms[room]
        member.rooms.clear()

    async def _sweep(self) -> None:
        """Evict members silent for longer than ``ping_timeout``."""
        loop = asyncio.get_running_loop()
        interval = min(_SWEEP_INTERVAL_MAX, self._ping_timeout / 4)
        while True:
            await asyncio.sleep(interval)
            deadline = loop.time() - self._ping_timeout
            for member in list(self._members.values()):
                if member.last_seen < deadline:
                    reason = f"no message for {self._ping_timeout:g} s"
                    logger.info("evicting peer %s: %s", member.id, reason)
                    self._remove(member)
                    self._spawn(_close_quietly(member.socket, reason))


async def _close_quietly(socket: ServerConnection, reason: str) -> None:
    with contextlib.suppress(ConnectionClosed, OSError):
        await socket.close(CLOSE_POLICY_VIOLATION, reason)


def _dumps(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode("utf-8")


async def start_signaling_server(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    ping_timeout: float = 120.0,
    max_message_bytes: int = 256 * 1024,
) -> SignalingServer:
    """Start a signaling server compatible with RxDB 17.6's WebRTC replication.

    ``port=0`` picks a free port (read it from ``server.port``). A socket that sends
    nothing for ``ping_timeout`` seconds is closed and announced as a leave
    (clients ping every 60 s). Frames over ``max_message_bytes`` close the socket.
    """
    if ping_timeout <= 0:
        raise ValidationError(
            f"ping_timeout must be positive, got {ping_timeout}", code="WEBRTC_SETTING_INVALID"
        )
    signaling = SignalingServer(host=host, ping_timeout=ping_timeout)
    server = await serve(signaling._handle, host, port, max_size=max_message_bytes)
    signaling._start(server)
    logger.info("signaling server listening on %s", signaling.url)
    return signaling
