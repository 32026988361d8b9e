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

Hardened: every limit is a field of :class:`~.signaling_limits.SignalingServerOptions`
(message rate, message size, rooms per socket, peers per room, open sockets, idle time, and
the bytes queued towards a socket that does not read), every close carries a
:class:`~.signaling_limits.CloseReason`; ``ssl=`` serves ``wss://`` and ``authenticate=``
checks each opening request (a bearer token, say) before the WebSocket opens.
Rooms live behind :class:`~.signaling_rooms.RoomRegistry`: here, or shared through Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl as ssl_module
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import orjson
from websockets.asyncio.server import Server, ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from p2pdb.errors import ReplicationError, ValidationError
from p2pdb.tokens import random_token

from .signaling_limits import (
    Admission,
    Authenticate,
    CloseReason,
    MessageRate,
    SignalingServerOptions,
    check_ssl,
)
from .signaling_rooms import MemoryRooms, Relay, RoomRegistry

__all__ = [
    "PEER_ID_LENGTH",
    "CloseReason",
    "SignalingServer",
    "SignalingServerOptions",
    "is_valid_room",
    "start_signaling_server",
]

logger = logging.getLogger("p2pdb.webrtc.signaling_server")

PEER_ID_LENGTH = 12
"""Length of the peer ids the server hands out (RxDB: ``randomToken(12)``)."""
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
    rate: MessageRate
    rooms: set[str] = field(default_factory=set)
    joining: set[str] = field(default_factory=set)  # announced, the registry's answer not in


class _Refusal(Exception):
    """A frame that ends its socket, with the reason."""

    def __init__(self, reason: CloseReason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class SignalingServer:
    """A signaling server; usually made and started by :func:`start_signaling_server`.

    Built by hand it listens only once ``await server.start()`` (or ``async with``).
    Stop it with :meth:`close`. ``port`` is the bound port (useful with port 0) and ``url``
    the ``ws://host:port`` (``wss://`` with TLS) address clients connect to. ``options``
    holds every limit; ``rooms`` where the rooms live (in memory by default).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 8080,
        options: SignalingServerOptions | None = None,
        ssl: ssl_module.SSLContext | None = None,
        authenticate: Authenticate | None = None,
        rooms: RoomRegistry | None = None,
    ) -> None:
        self.host = host
        self.options = options or SignalingServerOptions()
        """The limits this server enforces."""
        self.closes: dict[str, int] = {}
        """How many sockets were ended or refused, per :class:`CloseReason` code."""
        self._port = port
        self._ssl = check_ssl(ssl)
        self._members: dict[str, _Member] = {}
        self.registry: RoomRegistry = rooms or MemoryRooms()
        """Where the rooms live (:class:`~.signaling_rooms.MemoryRooms` by default)."""
        self._admission = Admission(self.options.max_connections, authenticate, self._count)
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
        """The ``ws://host:port`` (or ``wss://``) URL of the server."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'wss' if self._ssl else 'ws'}://{host}:{self.port}"

    @property
    def connection_count(self) -> int:
        """Open sockets (admitted, not yet gone)."""
        return self._admission.admitted

    def rooms(self) -> dict[str, list[str]]:
        """A snapshot of the rooms and their member ids (for tests and monitoring; with
        Redis, the rooms this node knows)."""
        return self.registry.rooms()

    def deliver(self, peer_id: str, text: str) -> None:
        """Queue ``text`` for this node's member ``peer_id`` (the registry's
        :class:`~.signaling_rooms.RoomHost` side); ignored if it is gone or we are closing."""
        member = self._members.get(peer_id)
        if member is not None and not self._closing:
            self._deliver(member, text)

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
        await self.registry.close()
        logger.info("signaling server on %s:%s closed", self.host, self._bound_port())

    async def __aenter__(self) -> SignalingServer:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> SignalingServer:
        """Start listening; does nothing the second time."""
        if self._server is not None or self._closing:
            return self
        limits = self.options
        await self.registry.start(self)
        self._server = await serve(
            self._handle,
            self.host,
            self._port,
            ssl=self._ssl,
            max_size=limits.max_message_bytes,
            open_timeout=limits.open_timeout,
            close_timeout=limits.close_timeout,
            process_request=self._admission.admit,
        )
        self._spawn(self._sweep())
        return self

    # -- internals ------------------------------------------------------------------------

    def _bound_port(self) -> int | None:
        if self._server is None or not self._server.sockets:
            return None
        return self.port

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _count(self, reason: CloseReason) -> None:
        self.closes[reason.code] = self.closes.get(reason.code, 0) + 1

    async def _handle(self, socket: ServerConnection) -> None:
        try:
            await self._serve_member(socket)
        finally:
            self._admission.release()

    async def _serve_member(self, socket: ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        peer_id = random_token(PEER_ID_LENGTH)
        while peer_id in self._members:
            peer_id = random_token(PEER_ID_LENGTH)
        limits = self.options
        now = loop.time()
        rate = MessageRate(limits.max_messages_per_second, limits.message_burst, now)
        member = _Member(id=peer_id, socket=socket, last_seen=now, rate=rate)
        self._members[peer_id] = member
        logger.info("peer %s connected from %s", peer_id, socket.remote_address)
        try:
            await socket.send(_dumps({"type": "init", "yourPeerId": peer_id}))
            async for raw in socket:
                if self._members.get(peer_id) is not member:
                    return  # evicted meanwhile: its socket is being closed
                member.last_seen = now = loop.time()
                try:
                    if not member.rate.allow(now):
                        raise _Refusal(
                            CloseReason.RATE_LIMITED,
                            f"over {limits.max_messages_per_second:g} messages/s "
                            f"(burst {limits.message_burst})",
                        )
                    await self._on_frame(member, raw)
                except (_Refusal, ReplicationError) as error:
                    refusal = _as_refusal(error)
                    logger.warning("closing peer %s: %s", peer_id, refusal.detail)
                    self._count(refusal.reason)
                    self._remove(member)
                    reason = refusal.reason
                    await _close_quietly(socket, reason.close_code, reason.reason(refusal.detail))
                    return
        except ConnectionClosed as closed:
            logger.info("peer %s disconnected (%s)", peer_id, closed)
        finally:
            self._remove(member)

    async def _on_frame(self, member: _Member, raw: str | bytes) -> None:
        """Handle one frame; raise :class:`_Refusal` if the socket must be closed."""
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _violation("invalid message: not JSON") from None
        if not isinstance(message, dict):
            raise _violation("invalid message: not a JSON object")
        kind = message.get("type")
        if kind == "ping":
            return
        if kind == "join":
            await self._join(member, message.get("room"))
        elif kind == "signal":
            await self._signal(member, message, raw)
        else:
            raise _violation(f"unknown message type {str(kind)[:40]!r}")

    async def _join(self, member: _Member, room: object) -> None:
        if not is_valid_room(room):
            raise _violation("invalid room: must be a string of 6-99 characters")
        assert isinstance(room, str)
        if room in member.rooms:
            return
        limits = self.options
        if len(member.rooms) >= limits.max_rooms_per_connection:
            detail = f"too many rooms (limit {limits.max_rooms_per_connection})"
            raise _Refusal(CloseReason.TOO_MANY_ROOMS, detail)
        member.joining.add(room)  # others may signal it once announced, before join returns
        try:
            joined = await self.registry.join(room, member.id, limits.max_peers_per_room)
        finally:
            member.joining.discard(room)
        if not joined:
            detail = f"room is full (limit {limits.max_peers_per_room} peers)"
            raise _Refusal(CloseReason.ROOM_FULL, detail)
        if self._members.get(member.id) is not member:  # evicted while the join ran
            self.registry.leave(member.id, [room])
            return
        member.rooms.add(room)
        logger.debug("peer %s joined room %r", member.id, room)

    async def _signal(self, member: _Member, message: dict[str, Any], raw: str | bytes) -> None:
        if message.get("senderPeerId") != member.id:
            raise _violation("spoofed sender")
        room = message.get("room")
        receiver_id = message.get("receiverPeerId")
        if not isinstance(room, str) or room not in member.rooms:
            raise _violation("signal to a room the sender has not joined")
        if not isinstance(receiver_id, str):
            raise _violation("signal without a receiverPeerId")
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
        receiver = self._members.get(receiver_id)
        if receiver is None:  # on another node, or gone
            relay = await self.registry.relay(room, receiver_id, text)
            if relay is Relay.OUTSIDE:
                raise _violation("signal to a peer outside the room")
            if relay is Relay.GONE:  # it left (a benign race with its disconnect): drop it
                logger.debug("dropping signal from %s to departed peer %s", member.id, receiver_id)
            return
        if room not in receiver.rooms and room not in receiver.joining:
            raise _violation("signal to a peer outside the room")
        self._deliver(receiver, text)

    def _deliver(self, receiver: _Member, text: str) -> None:
        """Queue ``text`` for ``receiver`` without waiting on it, within its byte bound.

        A receiver that lets more than ``max_send_buffer_bytes`` pile up is closed: what
        is queued for it is bounded, whatever its senders do."""
        transport = receiver.socket.transport
        queued = transport.get_write_buffer_size() if transport is not None else 0
        if queued + len(text) > self.options.max_send_buffer_bytes:
            detail = f"over {self.options.max_send_buffer_bytes} bytes queued"
            logger.warning("closing peer %s: %s", receiver.id, detail)
            self._end(receiver, CloseReason.SLOW_RECEIVER, detail)
            return
        broadcast([receiver.socket], text)  # queued, without waiting on the receiver

    def _end(self, member: _Member, reason: CloseReason, detail: str) -> None:
        """Forget ``member`` and close its socket with a typed reason (in a task)."""
        if self._members.get(member.id) is not member:
            return
        self._count(reason)
        self._remove(member)
        self._spawn(_close_quietly(member.socket, reason.close_code, reason.reason(detail)))

    def _remove(self, member: _Member) -> None:
        """Forget a member and tell its rooms (idempotent)."""
        if self._members.get(member.id) is not member:
            return
        del self._members[member.id]
        self.registry.leave(member.id, member.rooms)
        member.rooms.clear()

    async def _sweep(self) -> None:
        """Evict members silent for longer than ``ping_timeout``."""
        loop = asyncio.get_running_loop()
        timeout = self.options.ping_timeout
        interval = min(_SWEEP_INTERVAL_MAX, timeout / 4)
        while True:
            await asyncio.sleep(interval)
            deadline = loop.time() - timeout
            for member in list(self._members.values()):
                if member.last_seen < deadline:
                    detail = f"no message for {timeout:g} s"
                    logger.info("evicting peer %s: %s", member.id, detail)
                    self._end(member, CloseReason.IDLE, detail)


def _as_refusal(error: _Refusal | ReplicationError) -> _Refusal:
    """A refusal as is; the shared rooms out of reach (Redis down) end the socket too: its
    client reconnects, through another node or once Redis is back."""
    if isinstance(error, _Refusal):
        return error
    return _Refusal(CloseReason.REDIS_UNAVAILABLE, str(error))


def _violation(detail: str) -> _Refusal:
    return _Refusal(CloseReason.PROTOCOL_VIOLATION, detail)


async def _close_quietly(socket: ServerConnection, code: int, reason: str) -> None:
    with contextlib.suppress(ConnectionClosed, OSError):
        await socket.close(code, reason)


def _dumps(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode("utf-8")


async def start_signaling_server(
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    ping_timeout: float = SignalingServerOptions.ping_timeout,
    max_message_bytes: int = SignalingServerOptions.max_message_bytes,
    options: SignalingServerOptions | None = None,
    ssl: ssl_module.SSLContext | None = None,
    authenticate: Authenticate | None = None,
    redis_url: str | None = None,
    rooms: RoomRegistry | None = None,
) -> SignalingServer:
    """Start a signaling server compatible with RxDB 17.6's WebRTC replication.

    ``port=0`` picks a free port (read it from ``server.port``). ``options`` holds every
    limit (:class:`SignalingServerOptions`); ``ping_timeout`` (idle seconds before a
    socket is closed; clients ping every 60 s) and ``max_message_bytes`` override the same
    fields of ``options``. ``ssl``: an :class:`ssl.SSLContext` with the certificate and key
    serves ``wss://``. ``authenticate(request) -> bool`` (sync or async) checks each
    opening request (headers, path with query string); False answers HTTP 401.

    ``redis_url`` (``redis://``, ``rediss://``; ``pip install p2pdb[redis]``): share rooms
    with every node on that Redis (docs/deployment.md); ``rooms``: any
    :class:`~.signaling_rooms.RoomRegistry` (say a tuned :class:`~.signaling_redis.RedisRooms`).
    ``SIGNALING_REDIS_UNAVAILABLE`` (:class:`ReplicationError`): Redis is out of reach at start.
    """
    if ping_timeout <= 0:
        raise ValidationError(
            f"ping_timeout must be positive, got {ping_timeout}", code="WEBRTC_SETTING_INVALID"
        )
    limits = options or SignalingServerOptions()
    overrides: dict[str, Any] = {}
    if ping_timeout != SignalingServerOptions.ping_timeout:
        overrides["ping_timeout"] = ping_timeout
    if max_message_bytes != SignalingServerOptions.max_message_bytes:
        overrides["max_message_bytes"] = max_message_bytes
    limits = dataclasses.replace(limits, **overrides)
    if redis_url is not None:
        from .signaling_redis import RedisRooms  # redis is an optional dependency

        if rooms is not None:
            raise ValidationError("redis_url or rooms, not both", code="WEBRTC_SETTING_INVALID")
        rooms = RedisRooms(redis_url)
    signaling = SignalingServer(
        host=host, port=port, options=limits, ssl=ssl, authenticate=authenticate, rooms=rooms
    )
    await signaling.start()
    logger.info("signaling server listening on %s", signaling.url)
    return signaling
