"""The seam between a :class:`~.link.Link` and the WebRTC engine under it.

A link owns what is the same on every engine (the signal inbox, the connect timeout,
framing, flow-controlled sending, ending, error reports); a :class:`LinkEngine` owns one
peer connection: negotiation, the data channel it creates or is given, the DTLS
fingerprints, the selected candidate pair and closing. Two engines implement it:
:class:`~.aiortc_engine.AiortcEngine` (the default) and :class:`~.native_link.NativeEngine`
(libdatachannel).

The link makes its engine with an :data:`EngineFactory` and hands it :class:`EngineEvents`,
the engine's only way back to the link. Every event is safe to call from the engine's
callbacks: it never raises (errors are logged) and does nothing once the link has ended.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy

from p2pdb.errors import PeerError

from .framing import DEFAULT_MAX_FRAME_BYTES, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_PARTIAL_MESSAGES
from .writer import DEFAULT_HIGH_WATER_MARK, DEFAULT_LOW_WATER_MARK, SendChannel

__all__ = [
    "ChannelEvents",
    "DataChannel",
    "EngineEvents",
    "EngineFactory",
    "LinkEngine",
    "LinkSettings",
    "TEARDOWN_TIMEOUT",
    "close_within",
    "guarded",
    "relay_missing",
    "unusable_description",
]

TEARDOWN_TIMEOUT = 5.0
"""Seconds an engine waits for its connection to close before abandoning it."""


@dataclass(frozen=True)
class LinkSettings:
    """Settings shared by the links of one handler."""

    ice_servers: tuple[RTCIceServer, ...] = ()
    relay_only: bool = False
    host_addresses: tuple[str, ...] | None = None
    connect_timeout: float = 15.0
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    max_partial_messages: int = DEFAULT_MAX_PARTIAL_MESSAGES
    high_water_mark: int = DEFAULT_HIGH_WATER_MARK
    low_water_mark: int = DEFAULT_LOW_WATER_MARK
    compression: bool = True  # accept and offer zlib frames (p2pdb peers: compression.py)
    delayed_sack: bool = True  # RFC 4960 6.2 delayed SACKs (sctp_sack.py)

    def rtc_configuration(self) -> RTCConfiguration:
        """A fresh aiortc configuration (never ``iceServers=None``: no public STUN)."""
        policy = RTCIceTransportPolicy.RELAY if self.relay_only else RTCIceTransportPolicy.ALL
        return RTCConfiguration(iceServers=list(self.ice_servers), iceTransportPolicy=policy)


class DataChannel(SendChannel, Protocol):
    """A data channel as a link sees it: :class:`~.writer.SendChannel` with its label, and
    ``close()``."""

    @property
    def label(self) -> str: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ChannelEvents:
    """What an engine tells about one more data channel on a connection (beyond the first,
    which :class:`EngineEvents` covers); on the event loop, never raising."""

    opened: Callable[[], None]
    """The channel opened."""
    frame: Callable[[str | bytes], None]
    """A frame arrived on it."""
    low: Callable[[], None]
    """Its buffered amount fell to its low threshold."""
    closed: Callable[[], None]
    """It closed."""


@dataclass(frozen=True)
class EngineEvents:
    """What an engine tells its link (on the event loop; none of these raises)."""

    channel: Callable[[SendChannel], bool]
    """The data channel exists (made by the initiator or given to the responder): the
    link sends through it. ``False``: the link has ended and does not take it."""
    opened: Callable[[], None]
    """The data channel opened."""
    frame: Callable[[str | bytes], None]
    """A frame arrived on the data channel."""
    low: Callable[[], None]
    """The channel's buffered amount fell to its low threshold."""
    closed: Callable[[], None]
    """The data channel closed: the link ends."""
    state: Callable[[str], None]
    """The connection's state changed: ``"failed"`` is reported and ends the link,
    ``"disconnected"`` and ``"closed"`` end it."""
    error: Callable[[PeerError, bool], None]
    """Report an error; ``True``: the link ends too."""
    extra_channel: Callable[[DataChannel], ChannelEvents | None] = lambda _channel: None
    """The remote opened one more channel on this connection: the channel's events, or
    ``None`` when the link refuses it (the engine closes it)."""


class LinkEngine(Protocol):
    """One peer connection under a link; see the module docstring.

    A method that cannot go on raises :class:`~p2pdb.errors.PeerError` (the link reports
    it and ends); any other exception is reported as ``WEBRTC_CONNECTION_FAILED``.
    """

    async def open(self, initiator: bool, label: str | None = None) -> str | None:
        """Make the peer connection; as ``initiator`` also the data channel (labelled
        ``label``, or 40 random hex characters as simple-peer does), and return the offer's
        SDP (``None`` for a responder, which waits for the offer)."""
        ...

    def open_channel(self, label: str, events: ChannelEvents) -> DataChannel:
        """One more ordered, reliable channel on the open connection (in-band: DCEP), its
        events delivered to ``events``."""
        ...

    async def apply_remote(self, kind: str, sdp: str) -> str | None:
        """Apply the remote's ``"offer"`` or ``"answer"``; return our answer's SDP to an
        offer (``None`` after an answer)."""
        ...

    async def add_candidate(self, text: str, mid: str | None, index: int | None) -> None:
        """Add one remote candidate (``text`` without ``a=``/``candidate:``; ``""``: the end
        of candidates). Raises ``PeerError`` for one it cannot read (reported, skipped)."""
        ...

    def dtls_fingerprints(self) -> tuple[str, str] | None:
        """``(local, remote)`` certificate fingerprints of this connection as our local and
        remote descriptions carry them; ``None`` before both are set."""
        ...

    def candidate_pair(self) -> tuple[str, str] | None:
        """Types of the selected local and remote candidates, ``None`` if unknown."""
        ...

    async def close(self) -> None:
        """Close the channel and the connection (bounded in time; never raises)."""
        ...


EngineFactory = Callable[[LinkSettings, str, EngineEvents], LinkEngine]
"""Makes a link's engine from the settings, the remote peer's id and the link's events."""


def guarded(
    logger: logging.Logger, remote_id: str, method: Callable[..., None]
) -> Callable[..., None]:
    """``method`` for an engine's callback: an exception is logged, never raised into it."""

    def call(*args: Any) -> None:
        try:
            method(*args)
        except Exception:
            logger.exception("error in a WebRTC callback for %s", remote_id)

    return call


async def close_within(closing: Awaitable[None], logger: logging.Logger, what: str) -> None:
    """Await ``closing`` for at most :data:`TEARDOWN_TIMEOUT` seconds; a timeout or an error
    is logged (``what``: "the connection to ..."), never raised."""
    try:
        async with asyncio.timeout(TEARDOWN_TIMEOUT):
            await closing
    except TimeoutError:
        # e.g. aioice retrying to delete a TURN allocation on a server that is gone
        logger.warning("closing %s took over %g s; abandoned", what, TEARDOWN_TIMEOUT)
    except Exception:
        logger.exception("closing %s failed", what)


def unusable_description(remote_id: str, kind: str, error: Exception) -> PeerError:
    """The error for a remote description the engine refused."""
    return PeerError(
        f"Peer {remote_id} sent an unusable {kind}: {error!r}",
        code="WEBRTC_SIGNAL_INVALID",
        peer_id=remote_id,
    )


def relay_missing(remote_id: str, ice_servers: tuple[RTCIceServer, ...]) -> PeerError:
    """The error for ``relay_only`` when gathering found no relay candidate: the engine
    dropped a failed TURN allocation silently, and the link would only time out."""
    urls = [
        url
        for server in ice_servers
        for url in ([server.urls] if isinstance(server.urls, str) else server.urls)
        if url.startswith(("turn:", "turns:"))
    ]
    return PeerError(
        f"No TURN relay candidate for peer {remote_id} (relay_only=True): the TURN "
        f"server {', '.join(urls)} refused the allocation or did not answer. Check its "
        "URL, username and credential (short-lived credentials may have expired).",
        code="WEBRTC_TURN_FAILED",
        peer_id=remote_id,
    )
