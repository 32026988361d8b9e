"""The typed options of the websocket replication server and client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from p2pdb.errors import ValidationError
from p2pdb.replication import ReplicationOptions
from p2pdb.replication.limits import PeerLimits

__all__ = ["Authenticate", "ClientOptions", "ServerOptions"]

#: Decides whether a client may replicate, from the headers of its ``auth`` message.
Authenticate = Callable[[Mapping[str, Any]], bool | Awaitable[bool]]

MiB = 1 << 20


def _check_positive(options: object) -> None:
    for f in fields(options):  # type: ignore[arg-type]
        value = getattr(options, f.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue  # None (a disabled ping), callables, nested options
        if not value > 0:
            raise ValidationError(
                f"{type(options).__name__}.{f.name} must be positive, got {value!r}.",
                code="WEBSOCKET_OPTION_INVALID",
                option=f.name,
            )


@dataclass(frozen=True, slots=True)
class ServerOptions:
    """How :func:`~p2pdb.plugins.replication_websocket.start_replication_server` serves.

    The limits bound what one client can make the server spend; a client over a limit is
    slowed down or disconnected, never served at the others' expense.
    """

    #: Largest frame a client may send, in bytes; a larger one closes its connection (1009).
    #: A connection holds at most about ``(4 + max_requests_in_flight)`` such frames.
    max_message_size: int = 16 * MiB
    #: Requests of one connection served at once; the server reads no further frames of
    #: that connection until one finishes (TCP then slows the client down).
    max_requests_in_flight: int = 8
    #: Stream events queued for one collection of one connection; past it (a client that
    #: reads too slowly) events are dropped and a single RESYNC follows once it caught up.
    max_queued_events: int = 100
    #: Open connections at once; more are closed at once with code 1013 (try again later).
    max_connections: int = 1000
    #: Called with the headers of a client's ``auth`` message (RxDB's ``headers`` option);
    #: when set, a client must send them before anything else, and a ``False`` (or an
    #: exception) disconnects it. ``None``: headers are ignored, as RxDB's server does.
    authenticate: Authenticate | None = None
    #: Seconds between keepalive pings, and to wait for the pong (``None``: no pings).
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    #: What each connection may make the server spend beyond the limits above: bytes of
    #: answers queued per collection (the server reads no further frames while they wait,
    #: and drops a client that reads nothing for ``drain_timeout``), the memory budget
    #: shared by every connection, nesting depth of a frame, unknown-method error rate.
    #: Its ``max_requests_in_flight`` is per collection; the one above is per connection.
    limits: PeerLimits = field(default_factory=PeerLimits)

    def __post_init__(self) -> None:
        _check_positive(self)
        if not isinstance(self.limits, PeerLimits):
            raise ValidationError(
                f"ServerOptions.limits must be a PeerLimits, got {self.limits!r}.",
                code="WEBSOCKET_OPTION_INVALID",
                option="limits",
            )


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """How :func:`~p2pdb.plugins.replication_websocket.replicate_websocket` connects."""

    #: Seconds to wait for an answer before the request fails (and is retried).
    request_timeout: float = 20.0
    #: Seconds to open the socket before the attempt counts as failed.
    connect_timeout: float = 10.0
    #: Reconnect delays: ``reconnect_delay`` doubling up to ``max_reconnect_delay``, with
    #: jitter (:class:`p2pdb.backoff.Backoff`).
    reconnect_delay: float = 0.5
    max_reconnect_delay: float = 10.0
    #: Sent in an ``auth`` message after each connect, like RxDB's ``headers`` option.
    headers: Mapping[str, str] = field(default_factory=dict)
    #: Largest frame accepted from the server, in bytes (a pull answer holds a whole batch).
    max_message_size: int = 64 * MiB
    #: How the replication itself runs (batch size, directions, live, retry delays).
    replication: ReplicationOptions = field(default_factory=ReplicationOptions)
    #: What the server may make this client spend: nesting depth, checkpoint size, the
    #: shared memory budget of queued sends (:class:`~p2pdb.replication.limits.PeerLimits`).
    limits: PeerLimits = field(default_factory=PeerLimits)

    def __post_init__(self) -> None:
        _check_positive(self)
        if self.reconnect_delay > self.max_reconnect_delay:
            raise ValidationError(
                "ClientOptions.reconnect_delay must not exceed max_reconnect_delay.",
                code="WEBSOCKET_OPTION_INVALID",
                option="reconnect_delay",
            )
