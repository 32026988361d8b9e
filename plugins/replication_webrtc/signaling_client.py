"""Client side of the RxDB-compatible signaling protocol (see :mod:`.signaling_server`).

:class:`SignalingClient` connects, waits for ``init``, joins one room, keeps the
member list, relays signals and pings. When the socket drops it reconnects with
capped exponential backoff and jitter; the server then issues a new peer id.
It knows nothing about WebRTC: its owner reacts through the callbacks. Given several URLs
(signaling nodes sharing rooms through Redis), it moves to the next one whenever a
connection fails or closes, so the peers of a node that died come back through another.

:class:`SignalingAccess` adds what a protected server or topic needs: an ``ssl`` context for
``wss://`` (a private CA, a self-signed certificate), extra HTTP ``headers`` for the
opening request (``{"Authorization": "Bearer ..."}``; a token may also ride in the URL's
query string), and a topic ``secret``: the server then sees only a keyed hash of the topic
and every signal payload is sealed (see :mod:`.signal_crypto`). A frame that fails to open is
dropped, counted in :attr:`SignalingClient.drops` and logged at a bounded rate.
"""

from __future__ import annotations

import asyncio
import logging
import ssl as ssl_module
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from p2pdb.backoff import Backoff
from p2pdb.errors import PeerError, ValidationError

from .signal_crypto import DropLog, SignalSealer, TopicSecret, check_secret, derive_signal_keys
from .signaling_limits import check_ssl
from .signaling_server import is_valid_room

__all__ = ["SignalingAccess", "SignalingClient", "signaling_urls"]

logger = logging.getLogger("p2pdb.webrtc.signaling_client")

DEFAULT_PING_INTERVAL = 60.0
DEFAULT_RECONNECT_DELAY_MIN = 0.5
DEFAULT_RECONNECT_DELAY_MAX = 15.0


class _ProtocolViolation(Exception):
    """The server did not speak the protocol (e.g. no ``init`` first)."""


def _noop(*_args: Any) -> None:
    return None


@dataclass(frozen=True)
class SignalingAccess:
    """How to reach a protected signaling server and topic (all optional)."""

    secret: str | bytes | TopicSecret | None = field(default=None, repr=False)
    """The topic secret: hashed room name, sealed signals (p2pdb peers only)."""
    ssl: ssl_module.SSLContext | None = None
    """TLS settings for ``wss://`` (e.g. a context trusting a private CA)."""
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    """Extra HTTP headers of the opening request, e.g. ``{"Authorization": "Bearer t"}``."""

    def __post_init__(self) -> None:
        if self.secret is not None:
            check_secret(self.secret)
        check_ssl(self.ssl)


class SignalingClient:
    """A self-reconnecting member of one signaling room.

    Callbacks (all optional, called on the event loop, exceptions are logged):

    - ``on_ready(own_peer_id)``: the server issued our id for this socket.
    - ``on_members(peer_ids)``: the room's members changed (our own id left out).
    - ``on_signal(frame)``: a ``signal`` frame addressed to us (the whole frame).
    - ``on_lost()``: the socket dropped; a new id will follow after reconnecting.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        room: str,
        *,
        on_ready: Callable[[str], None] = _noop,
        on_members: Callable[[list[str]], None] = _noop,
        on_signal: Callable[[dict[str, Any]], None] = _noop,
        on_lost: Callable[[], None] = _noop,
        ping_interval: float = DEFAULT_PING_INTERVAL,
        reconnect_delay_min: float = DEFAULT_RECONNECT_DELAY_MIN,
        reconnect_delay_max: float = DEFAULT_RECONNECT_DELAY_MAX,
        open_timeout: float = 10.0,
        access: SignalingAccess | None = None,
    ) -> None:
        if not is_valid_room(room):
            raise ValidationError(
                f"A WebRTC topic must be a string of 6-99 characters, got {room!r}",
                code="WEBRTC_TOPIC_INVALID",
                topic=room,
            )
        self.urls = signaling_urls(url)
        """The signaling servers, tried in turn (the next one after each failure or close)."""
        self._url_index = 0
        self.room = room
        self.access = access or SignalingAccess()
        """TLS, headers and topic secret."""
        self.drops = DropLog(logger)
        """Signals dropped because they failed to open (``drops.counts`` per code)."""
        self._sealer: SignalSealer | None = None
        self._on_ready = on_ready
        self._on_members = on_members
        self._on_signal = on_signal
        self._on_lost = on_lost
        self._ping_interval = ping_interval
        self._delay_min = reconnect_delay_min
        self._delay_max = reconnect_delay_max
        self._open_timeout = open_timeout
        self._socket: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._joined = asyncio.Event()
        self._closed = False
        self.own_peer_id: str | None = None
        """Our id on the current socket, ``None`` while disconnected."""
        self.members: tuple[str, ...] = ()
        """The other members of the room, as last announced."""

    @property
    def url(self) -> str:
        """The signaling server in use (or tried next)."""
        return self.urls[self._url_index]

    @property
    def server_room(self) -> str | None:
        """The room name the server sees: the topic, or its keyed hash with a secret
        (``None`` until the keys are derived)."""
        if self.access.secret is None:
            return self.room
        return None if self._sealer is None else self._sealer.keys.room

    @property
    def joined(self) -> bool:
        """True while connected and listed in the room."""
        return self._joined.is_set()

    def start(self) -> None:
        """Start connecting (in a task owned by this client)."""
        if self._task is None and not self._closed:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def wait_joined(self) -> None:
        """Wait until we are in the room (wrap it in ``asyncio.timeout``)."""
        await self._joined.wait()

    async def send_signal(
        self, receiver_peer_id: str, data: object, connection_id: str | None = None
    ) -> bool:
        """Relay ``data`` to another member; False if we are not connected (dropped)."""
        socket, own, room = self._socket, self.own_peer_id, self.server_room
        if socket is None or own is None or room is None:
            logger.debug("signal to %s dropped: not connected", receiver_peer_id)
            return False
        if self._sealer is not None:
            data = self._sealer.seal(
                data, sender=own, receiver=receiver_peer_id, connection_id=connection_id
            )
        frame: dict[str, Any] = {
            "type": "signal",
            "room": room,
            "senderPeerId": own,
            "receiverPeerId": receiver_peer_id,
            "data": data,
        }
        if connection_id is not None:
            frame["connectionId"] = connection_id
        try:
            await socket.send(orjson.dumps(frame).decode("utf-8"))
        except ConnectionClosed:
            return False
        return True

    async def close(self) -> None:
        """Leave the room and stop reconnecting; waits for the socket to close."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    # -- internals ------------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = Backoff(self._delay_min, self._delay_max, jitter=(0.5, 1.0))
        secret = self.access.secret
        if secret is not None and self._sealer is None:
            if check_secret(secret).kdf == "scrypt":  # tens of ms: not on the loop
                keys = await asyncio.to_thread(derive_signal_keys, secret, self.room)
            else:
                keys = derive_signal_keys(secret, self.room)
            self._sealer = SignalSealer(keys)
        while not self._closed:
            joined_before = False
            try:
                async with connect(
                    self.url,
                    open_timeout=self._open_timeout,
                    close_timeout=2.0,
                    ssl=self.access.ssl if self.url.startswith("wss://") else None,
                    additional_headers=self.access.headers,
                ) as socket:
                    self._socket = socket
                    await self._session(socket)
            except InvalidStatus as error:
                body = error.response.body.decode("utf-8", "replace").strip()[:80]
                logger.warning(
                    "signaling server %s refused us: HTTP %s %s",
                    self.url,
                    error.response.status_code,
                    body,
                )
            except (OSError, TimeoutError, ConnectionClosed, InvalidHandshake) as error:
                logger.warning("signaling connection to %s failed: %r", self.url, error)
            except InvalidURI as error:
                logger.error("signaling URL %s is invalid: %s", self.url, error)
                if len(self.urls) == 1:
                    return  # nothing else to try
            except _ProtocolViolation as error:
                logger.warning("signaling server %s broke the protocol: %s", self.url, error)
            except Exception:
                logger.exception("signaling connection to %s failed unexpectedly", self.url)
            finally:
                joined_before = self._joined.is_set()
                self._socket = None
                self._joined.clear()
                if self.own_peer_id is not None:
                    self.own_peer_id = None
                    self._call(self._on_lost)
            if joined_before:
                backoff.reset()
            self._url_index = (self._url_index + 1) % len(self.urls)
            pause = backoff.next_delay()
            logger.info("reconnecting to signaling server %s in %.2f s", self.url, pause)
            await asyncio.sleep(pause)

    async def _session(self, socket: ClientConnection) -> None:
        async with asyncio.timeout(self._open_timeout):
            first = _parse(await socket.recv())
        if first is None or first.get("type") != "init":
            raise _ProtocolViolation("the first frame was not `init`")
        own = first.get("yourPeerId")
        if not isinstance(own, str) or not own:
            raise _ProtocolViolation("`init` carried no peer id")
        self.own_peer_id = own
        logger.info("signaling: our peer id is %s; joining %r", own, self.room)
        self._call(self._on_ready, own)
        join = {"type": "join", "room": self.server_room}
        await socket.send(orjson.dumps(join).decode("utf-8"))
        pinger = asyncio.get_running_loop().create_task(self._ping(socket))
        try:
            async for raw in socket:
                message = _parse(raw)
                if message is not None:
                    self._dispatch(own, message)
        finally:
            pinger.cancel()
            await asyncio.wait([pinger])

    def _dispatch(self, own: str, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "joined":
            ids = message.get("otherPeerIds")
            if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
                logger.warning("signaling: malformed `joined` frame ignored")
                return
            self.members = tuple(i for i in ids if i != own)
            if own in ids:
                self._joined.set()
            self._call(self._on_members, list(self.members))
        elif kind == "signal":
            sender = message.get("senderPeerId")
            if message.get("receiverPeerId") != own or not isinstance(sender, str):
                return
            if self._sealer is not None:
                try:
                    data = self._sealer.open(
                        message.get("data"),
                        sender=sender,
                        receiver=own,
                        connection_id=message.get("connectionId"),
                    )
                except PeerError as error:
                    self.drops.report(error)
                    return
                message = {**message, "data": data}
            self._call(self._on_signal, message)
        else:
            logger.debug("signaling: ignoring frame of type %r", kind)

    async def _ping(self, socket: ClientConnection) -> None:
        ping = orjson.dumps({"type": "ping"}).decode("utf-8")
        while True:
            await asyncio.sleep(self._ping_interval)
            try:
                await socket.send(ping)
            except ConnectionClosed:
                return

    @staticmethod
    def _call(callback: Callable[..., None], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:
            logger.exception("signaling callback %r failed", callback)


def signaling_urls(url: str | Sequence[str]) -> tuple[str, ...]:
    """One signaling URL or several (failover), each ``ws://`` or ``wss://``, as a tuple."""
    urls = (url,) if isinstance(url, str) else tuple(url)
    if not urls:
        raise ValidationError(
            "Give at least one signaling URL", code="WEBRTC_SIGNALING_URL_INVALID", url=""
        )
    for one in urls:
        if not isinstance(one, str) or not one.startswith(("ws://", "wss://")):
            raise ValidationError(
                f"The signaling URL must start with ws:// or wss://, got {one!r}",
                code="WEBRTC_SIGNALING_URL_INVALID",
                url=one,
            )
    return urls


def _parse(raw: str | bytes) -> dict[str, Any] | None:
    try:
        message = orjson.loads(raw)
    except orjson.JSONDecodeError:
        logger.warning("signaling: a frame that is not JSON was ignored")
        return None
    return message if isinstance(message, dict) else None
