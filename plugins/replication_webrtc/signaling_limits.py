"""The signaling server's limits: one typed options object, the typed close reasons, and
the per-connection message-rate bucket.

Every limit is a field of :class:`SignalingServerOptions` with its default; every way the
server ends a connection is a :class:`CloseReason`: a WebSocket close code plus a reason text
that starts with a stable code (``"SIGNALING_RATE_LIMITED: ..."``), or an HTTP status and
body for connections refused before the WebSocket opens.
"""

from __future__ import annotations

import hmac
import inspect
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from enum import Enum
from http import HTTPStatus
from typing import Any, TypeAlias
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from p2pdb.errors import ValidationError

__all__ = [
    "Admission",
    "Authenticate",
    "CloseReason",
    "MessageRate",
    "SignalingServerOptions",
    "bearer_token",
    "check_ssl",
]

logger = logging.getLogger("p2pdb.webrtc.signaling_server")

Authenticate: TypeAlias = Callable[[Any], "bool | Awaitable[bool]"]
"""``authenticate(request) -> bool`` (sync or async): ``request`` is the WebSocket opening
request (``websockets.http11.Request``: ``.path`` with its query string, ``.headers``).
False refuses the connection with HTTP 401 before the WebSocket opens."""


def bearer_token(token: str) -> Authenticate:
    """An ``authenticate`` hook admitting requests that carry ``token``: as
    ``Authorization: Bearer <token>`` or, for browsers (which cannot set WebSocket headers,
    RxDB's client among them), as ``?token=<token>`` in the URL. Compared in constant time."""
    if not token:
        raise ValidationError("the token must not be empty", code="WEBRTC_SETTING_INVALID")
    expected = token.encode("utf-8")

    def check(request: Any) -> bool:
        header = str(request.headers.get("Authorization", ""))
        offered = [header[7:]] if header[:7].lower() == "bearer " else []
        offered += parse_qs(urlsplit(str(request.path)).query).get("token", [])
        return any(hmac.compare_digest(o.encode("utf-8"), expected) for o in offered)

    return check


class CloseReason(Enum):
    """Why the server ended a connection: ``(close code, stable reason code)``.

    The close frame's reason is ``"<code>: <detail>"``; HTTP refusals (``http=True``) carry
    the code as their status line's body instead."""

    PROTOCOL_VIOLATION = (1008, "SIGNALING_PROTOCOL_VIOLATION")
    IDLE = (1008, "SIGNALING_IDLE")
    TOO_MANY_ROOMS = (1008, "SIGNALING_TOO_MANY_ROOMS")
    ROOM_FULL = (1008, "SIGNALING_ROOM_FULL")
    RATE_LIMITED = (1008, "SIGNALING_RATE_LIMITED")
    SLOW_RECEIVER = (1008, "SIGNALING_SLOW_RECEIVER")
    REDIS_UNAVAILABLE = (1013, "SIGNALING_REDIS_UNAVAILABLE")
    SERVER_FULL = (503, "SIGNALING_SERVER_FULL")
    UNAUTHORIZED = (401, "SIGNALING_UNAUTHORIZED")

    @property
    def close_code(self) -> int:
        """The WebSocket close code (or the HTTP status for refused handshakes)."""
        code: int = self.value[0]
        return code

    @property
    def code(self) -> str:
        """The stable code that starts the reason text."""
        text: str = self.value[1]
        return text

    def reason(self, detail: str) -> str:
        """The close frame's reason text, kept within the 123 bytes a close frame holds."""
        text = f"{self.code}: {detail}"
        return text.encode("utf-8")[:123].decode("utf-8", "ignore")


@dataclass(frozen=True)
class SignalingServerOptions:
    """Every limit of the signaling server, with its default.

    The defaults serve RxDB 17.6 and p2pdb clients unchanged (a client pings every 60 s, a
    WebRTC connection costs a handful of signals) while bounding what one socket, one room
    and the whole server can hold.
    """

    ping_timeout: float = 120.0
    """Idle timeout: a socket that sends nothing for this long is closed (``SIGNALING_IDLE``)."""
    max_message_bytes: int = 256 * 1024
    """A larger frame closes the socket (close code 1009, from the WebSocket layer)."""
    max_send_buffer_bytes: int = 256 * 1024
    """Bytes queued towards one socket that does not read; past it the socket is closed
    (``SIGNALING_SLOW_RECEIVER``) and nothing more is queued for it."""
    max_messages_per_second: float = 50.0
    """Sustained frames per second one socket may send (a token bucket) ..."""
    message_burst: int = 500
    """... with bursts of up to this many frames; past it: ``SIGNALING_RATE_LIMITED``."""
    max_rooms_per_connection: int = 64
    """Rooms one socket may join (``SIGNALING_TOO_MANY_ROOMS``)."""
    max_peers_per_room: int = 256
    """Members of one room; one more join closes that socket (``SIGNALING_ROOM_FULL``)."""
    max_connections: int = 10_000
    """Open sockets; more are refused with HTTP 503 (``SIGNALING_SERVER_FULL``)."""
    open_timeout: float = 10.0
    """Seconds a client has to finish the opening handshake."""
    close_timeout: float = 5.0
    """Seconds a closing socket may take to acknowledge before it is dropped."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValidationError(
                    f"{item.name} must be a positive number, got {value!r}",
                    code="WEBRTC_SETTING_INVALID",
                    setting=item.name,
                )


def check_ssl(context: object) -> ssl.SSLContext | None:
    """``ssl`` must be ``None`` or an :class:`ssl.SSLContext` (for ``wss://``)."""
    if context is None or isinstance(context, ssl.SSLContext):
        return context
    raise ValidationError(
        f"ssl must be an ssl.SSLContext, got {type(context).__name__}",
        code="WEBRTC_SETTING_INVALID",
        setting="ssl",
    )


class MessageRate:
    """A token bucket: ``rate`` frames per second, bursts of ``burst``."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = now

    def allow(self, now: float) -> bool:
        """Take one token; False when the bucket is empty."""
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class Admission:
    """Decides, before a WebSocket opens, whether it may: the connection cap, then the
    ``authenticate`` hook (an exception in the hook refuses, and is logged)."""

    def __init__(
        self,
        max_connections: int,
        authenticate: Authenticate | None,
        count: Callable[[CloseReason], None],
    ) -> None:
        self.admitted = 0
        """Sockets admitted and not yet released."""
        self._max = max_connections
        self._authenticate = authenticate
        self._count = count

    async def admit(self, socket: ServerConnection, request: Request) -> Response | None:
        """``process_request`` of the server: None admits, a response refuses."""
        if self.admitted >= self._max:
            return self._refuse(socket, CloseReason.SERVER_FULL)
        if self._authenticate is not None:
            try:
                verdict = self._authenticate(request)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception:
                logger.exception("the authenticate hook raised; refusing the connection")
                verdict = False
            if verdict is not True:
                return self._refuse(socket, CloseReason.UNAUTHORIZED)
            if self.admitted >= self._max:  # filled up while the hook ran
                return self._refuse(socket, CloseReason.SERVER_FULL)
        self.admitted += 1
        return None

    def release(self) -> None:
        """An admitted socket is gone."""
        self.admitted -= 1

    def _refuse(self, socket: ServerConnection, reason: CloseReason) -> Response:
        self._count(reason)
        logger.info("refusing a connection from %s: %s", socket.remote_address, reason.code)
        return socket.respond(HTTPStatus(reason.close_code), f"{reason.code}\n")
