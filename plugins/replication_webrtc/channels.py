"""One data channel of a link: its frames, its messages, and where they go.

A :class:`~.link.Link` (one peer connection) carries one or more data channels. A
:class:`LinkChannel` owns what is per channel: flow-controlled sending
(:class:`~.writer.ChannelWriter`), reassembling chunked messages (:mod:`.framing`), frame
compression (:mod:`.compression`, agreed by the handshake of the session on this channel),
and its *route*: where its complete messages go. A channel without a route yet is *held*:
its messages wait (at most :data:`HELD_MESSAGES` messages and :data:`HELD_BYTES` bytes of
frames) until a route is set, when they are delivered in order; past either bound the
channel reports ``WEBRTC_PEER_OVER_LIMIT`` (``limit="held_channel"``) and closes.

The labels that route channels between p2pdb peers (:func:`channel_label`,
:func:`parse_label`): ``p2pdb/1/<collection>`` carries one collection's replication,
``p2pdb/1`` is the control channel of the link (see :mod:`.multiplex`); any other label is
an RxDB peer's (simple-peer labels its one channel with 40 random hex characters).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2pdb.errors import PeerError

from .compression import FrameCompression
from .engine import ChannelEvents, DataChannel, LinkSettings, guarded
from .framing import PLAIN_FRAME_BYTES, JSONMessage, Reassembler, encode_message
from .peer import Peer
from .writer import ChannelWriter

__all__ = [
    "CONTROL_LABEL",
    "HELD_BYTES",
    "HELD_MESSAGES",
    "LABEL_PREFIX",
    "ChannelHooks",
    "LinkChannel",
    "channel_label",
    "deferred_events",
    "parse_label",
]

logger = logging.getLogger("p2pdb.webrtc.link")

#: The label of a link's control channel between p2pdb peers.
CONTROL_LABEL = "p2pdb/1"
#: What a collection channel's label starts with (then the collection's name).
LABEL_PREFIX = CONTROL_LABEL + "/"
#: Messages a held channel keeps for the route it waits for.
HELD_MESSAGES = 64
#: Bytes of frames a held channel keeps.
HELD_BYTES = 1024 * 1024
_MAX_NAME = 200


def channel_label(collection: str) -> str:
    """The label of the channel carrying ``collection`` between p2pdb peers."""
    return LABEL_PREFIX + collection


def parse_label(label: str) -> str | None:
    """The collection a ``p2pdb/1/<collection>`` label names, else ``None`` (the control
    channel's label, an RxDB peer's random one, or a name too long to be a collection)."""
    if not label.startswith(LABEL_PREFIX):
        return None
    name = label[len(LABEL_PREFIX) :]
    return name if 0 < len(name) <= _MAX_NAME else None


def deferred_events(holder: list[LinkChannel]) -> ChannelEvents:
    """Events for a channel we open, delivered to ``holder[0]`` once it exists (the engine
    needs the events before the :class:`LinkChannel` can be made around its channel)."""

    def to(name: str) -> Callable[..., None]:
        def call(*args: Any) -> None:
            if holder:
                getattr(holder[0].events(), name)(*args)

        return call

    return ChannelEvents(to("opened"), to("frame"), to("low"), to("closed"))


@dataclass(frozen=True)
class ChannelHooks:
    """How a :class:`LinkChannel` talks to its link (on the event loop)."""

    opened: Callable[[LinkChannel], None]
    closed: Callable[[LinkChannel], None]
    """The channel closed (called once, also when we closed it)."""
    failed: Callable[[LinkChannel, PeerError], None]
    """A bad frame (or a held channel over its bounds): the link reports it."""


class LinkChannel:
    """One data channel of a link; see the module docstring."""

    def __init__(
        self,
        channel: DataChannel,
        label: str,
        peer: Peer,
        settings: LinkSettings,
        hooks: ChannelHooks,
        *,
        frame_limit: Callable[[], int],
        compression: FrameCompression | None = None,
    ) -> None:
        self.channel = channel
        """The engine's channel (an aiortc ``RTCDataChannel`` or a native channel)."""
        self.label = label
        self.collection = parse_label(label)
        """The collection its label names (``None``: control or RxDB channel)."""
        self.peer = peer
        """The peer as the sessions on this channel know it."""
        self.compression = compression or FrameCompression(settings.compression)
        self.opened = False
        self.closed = False
        self.opened_here = False
        """Whether this side opened it (else the remote did)."""
        self.open_or_closed = asyncio.Event()
        """Set once it opened, or closed without opening."""
        self._hooks = hooks
        self._frame_limit = frame_limit
        self._writer = ChannelWriter(
            channel,
            high_water_mark=settings.high_water_mark,
            low_water_mark=settings.low_water_mark,
            peer_id=peer.peer_id,
        )
        self._reassembler = Reassembler(
            max_message_size=settings.max_message_size,
            max_partial_messages=settings.max_partial_messages,
        )
        self._route: Callable[[LinkChannel, JSONMessage], None] | None = None
        self._held: list[JSONMessage] = []
        self._held_bytes = 0

    def events(self) -> ChannelEvents:
        """The callbacks an engine delivers this channel's events to (never raising)."""

        def call(method: Callable[..., None]) -> Callable[..., None]:
            return guarded(logger, self.peer.peer_id, method)

        return ChannelEvents(
            opened=call(self.mark_open),
            frame=call(self.feed),
            low=call(self.notify_low),
            closed=call(self.mark_closed),
        )

    def notify_low(self) -> None:
        """The channel's buffered amount fell to its low threshold."""
        self._writer.notify_low()

    @property
    def routed(self) -> bool:
        """Whether its messages go somewhere (else they are held)."""
        return self._route is not None

    def route(self, to: Callable[[LinkChannel, JSONMessage], None] | None) -> None:
        """Deliver messages to ``to`` from now on, the held ones first (``None``: hold)."""
        self._route = to
        held, self._held, self._held_bytes = self._held, [], 0
        for message in held:
            if self._route is None or self.closed:
                break
            self._route(self, message)

    def mark_open(self) -> None:
        """The channel opened (idempotent)."""
        if self.opened or self.closed:
            return
        self.opened = True
        self.open_or_closed.set()
        self._hooks.opened(self)

    def mark_closed(self) -> None:
        """The channel closed (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self.open_or_closed.set()
        self._route = None
        self._held, self._held_bytes = [], 0
        self._reassembler.clear()
        self._writer.close()
        self._hooks.closed(self)

    def close(self) -> None:
        """Close it (idempotent): sends fail from now on, nothing more is delivered."""
        if self.closed:
            return
        try:
            self.channel.close()
        except Exception:  # already gone underneath: closed all the same
            logger.debug("closing channel %r failed", self.label, exc_info=True)
        self.mark_closed()

    def feed(self, frame: str | bytes) -> None:
        """A frame arrived: reassemble, then deliver or hold the message it completes."""
        if self.closed:
            return
        if not self.opened:
            self.mark_open()
        if self._route is None:
            self._held_bytes += len(frame)
        try:
            message = self.compression.feed(self._reassembler, frame)
        except PeerError as error:
            error.parameters["peer_id"] = self.peer.peer_id
            self._hooks.failed(self, error)
            return
        if message is None:
            return
        if self._route is not None:
            self._route(self, message)
            return
        self._held.append(message)
        if len(self._held) > HELD_MESSAGES or self._held_bytes > HELD_BYTES:
            overflow = PeerError(
                f"Peer {self.peer.peer_id} sent more than {HELD_MESSAGES} messages or "
                f"{HELD_BYTES} bytes on channel {self.label!r} before anything here "
                "replicated it; channel closed",
                code="WEBRTC_PEER_OVER_LIMIT",
                peer_id=self.peer.peer_id,
                limit="held_channel",
            )
            self.close()
            self._hooks.failed(self, overflow)

    @property
    def gauge(self) -> ChannelWriter:
        """How far the channel took the frames sent in order (a
        :class:`~p2pdb.replication.lanes.FlushGauge`)."""
        return self._writer

    def send_now(self, message: object) -> None:
        """Send one small message at once, ahead of any queued one (a channel's first)."""
        if self.closed:
            return
        for frame in encode_message(message, max_frame_bytes=self._frame_limit()):
            try:
                self.channel.send(frame)
            except Exception as error:  # closed underneath: its close event follows
                logger.debug("sending on %r failed: %r", self.label, error)
                return

    async def send(self, message: object) -> None:
        """Send one message (chunked, compressed when agreed, flow controlled); raises
        ``WEBRTC_PEER_GONE`` once the channel is closed."""
        if self.closed or not self.opened:
            raise PeerError(
                f"Peer {self.peer.peer_id} ({self.peer.connection_id}) is not connected",
                code="WEBRTC_PEER_GONE",
                peer_id=self.peer.peer_id,
            )
        limit = self._frame_limit()
        frames = self.compression.encode(message, limit) or [
            # binary UTF-8 frames: RxDB's simple-peer turns a text frame into a Buffer byte
            # by byte in JavaScript before it parses it, and only wraps a binary one
            frame.encode("utf-8")
            for frame in encode_message(message, max_frame_bytes=min(limit, PLAIN_FRAME_BYTES))
        ]
        await self._writer.send_frames(frames)
