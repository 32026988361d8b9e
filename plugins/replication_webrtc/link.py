"""One WebRTC link: a connection attempt to one remote peer and its data channel.

A :class:`Link` negotiates as initiator (offer, one ordered in-band channel labelled with
40 hex chars) or responder (answer, takes the channel it is given), applies trickled
candidates in either form whenever they arrive, enforces the connect timeout, and turns
channel frames into messages (:mod:`.framing`) and messages into flow-controlled frames
(:class:`~.writer.ChannelWriter`). What touches the peer connection is its engine's
(:mod:`.engine`: :class:`~.aiortc_engine.AiortcEngine` by default, or the native
:class:`~.native_link.NativeEngine`). Its owner (the connection handler) decides when
links are made and ended, and hears about them through :class:`LinkCallbacks`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from p2pdb.errors import PeerError
from p2pdb.tokens import random_token

from .aiortc_engine import AiortcEngine
from .channels import ChannelHooks, LinkChannel, deferred_events
from .compression import FrameCompression
from .engine import (
    ChannelEvents,
    DataChannel,
    EngineEvents,
    EngineFactory,
    LinkEngine,
    LinkSettings,
    guarded,
)
from .framing import JSONMessage
from .peer import Peer
from .sdp import frame_limit
from .writer import SendChannel

__all__ = ["Link", "LinkCallbacks", "LinkSettings"]

logger = logging.getLogger("p2pdb.webrtc.link")

_MAX_QUEUED_SIGNALS = 256
_MAX_PENDING_CANDIDATES = 32


@dataclass(frozen=True)
class LinkCallbacks:
    """How a :class:`Link` talks to the handler that owns it (all on the event loop)."""

    send_signal: Callable[[Link, dict[str, Any]], Awaitable[None]]
    """Relay a simple-peer payload to the remote peer."""
    opened: Callable[[Link], None]
    """The data channel opened."""
    message: Callable[[Link, JSONMessage], None]
    """A complete message arrived."""
    error: Callable[[Link, PeerError], None]
    """Something went wrong with this link (it may end next)."""
    ended: Callable[[Link], None]
    """The link ended (called once); its task is tearing it down."""
    label: Callable[[Link], str | None] = lambda _link: None
    """The first channel's label, asked when the initiator makes it (``None``: random)."""
    channel: Callable[[Link, LinkChannel], bool] = lambda _link, _channel: False
    """The remote opened one more channel: take it (``False``: it is closed)."""
    channel_opened: Callable[[Link, LinkChannel], None] = lambda _link, _channel: None
    """One more channel (ours or the remote's) opened."""
    channel_closed: Callable[[Link, LinkChannel], None] = lambda _link, _channel: None
    """A channel closed while the link goes on (the first one too: then the link ends,
    unless :attr:`Link.multiplexed`)."""


class _LinkFailed(Exception):
    """Ends a link's task after the cause was already reported."""


class Link:
    """One connection attempt to ``remote_id``; see the module docstring."""

    def __init__(
        self,
        callbacks: LinkCallbacks,
        settings: LinkSettings,
        *,
        local_id: str,
        remote_id: str,
        initiator: bool,
        connection_id: str | None,
        engine: EngineFactory = AiortcEngine,
        label: str | None = None,
    ) -> None:
        self.local_id = local_id
        self.remote_id = remote_id
        self.initiator = initiator
        self.signal_connection_id = connection_id  # as in signaling (None from old RxDB)
        self.peer = Peer(remote_id, connection_id or random_token(10), initiator)
        self.connected = False
        self.ended = False
        self.task: asyncio.Task[None] | None = None
        self._on = callbacks
        self._settings = settings
        self.engine: LinkEngine = engine(settings, remote_id, self._engine_events())
        """The peer connection under this link (an :class:`~.engine.LinkEngine`)."""
        self._inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._pending_candidates: list[dict[str, Any]] = []
        self._remote_description_set = False
        self._max_frame_bytes = settings.max_frame_bytes
        self.compression = FrameCompression(settings.compression)
        """The first channel's frame compression."""
        self.label = label
        """The label of the first channel as initiator (``None``: random, as simple-peer)."""
        self.primary: LinkChannel | None = None
        """The first data channel (made by the initiator), once the engine has it."""
        self.extra_channels: list[LinkChannel] = []
        """The other channels on this connection, open or opening (see multiplex.py)."""
        self.multiplexed = False
        """Set once the remote proved to be p2pdb (multiplex.py): the first channel closing
        then ends only that channel, not the link."""
        self._channel_count = 0
        self._hooks = ChannelHooks(self._channel_opened, self._channel_closed, self._bad_frame)

    @property
    def key(self) -> tuple[str, str]:
        """``(own signaling id when made, remote id)``."""
        return (self.local_id, self.remote_id)

    def start(self) -> asyncio.Task[None]:
        """Start negotiating in a task (owned by the caller)."""
        self.task = asyncio.get_running_loop().create_task(self._run())
        return self.task

    def queue_signal(self, data: dict[str, Any]) -> None:
        """Hand over a simple-peer payload from the remote; applied in order."""
        if self._inbox.qsize() >= _MAX_QUEUED_SIGNALS:
            logger.warning("too many queued signals from %s; dropping one", self.remote_id)
            return
        self._inbox.put_nowait(data)

    def end(self) -> None:
        """End now (idempotent, synchronous); the task then closes the connection."""
        if self.ended:
            return
        self.ended = True
        for channel in [self.primary, *self.extra_channels]:
            if channel is not None:
                channel.mark_closed()
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()
        self._on.ended(self)

    async def wait_closed(self) -> None:
        """Wait until the task has closed the connection."""
        if self.task is not None:
            await asyncio.wait([self.task])

    async def send(self, message: object) -> None:
        """Send one message (chunked and flow controlled).

        A channel that cannot take it any more ends the link first. The native engine
        closes a channel (the remote closed it, or the connection went away) in its own
        threads and tells the loop later; a send in between finds the channel closed or
        has its frame refused. That is the peer leaving, as on aiortc (where the channel's
        state and its ``close`` event change together on the loop, and the link has ended
        before any send sees the state): so the link ends here, at once (the session stops
        before the failed send's ``WEBRTC_PEER_GONE`` reaches it), and that error is raised
        to the sender.
        """
        if self.ended or not self.connected or self.primary is None:
            raise PeerError(
                f"Peer {self.remote_id} ({self.peer.connection_id}) is not connected",
                code="WEBRTC_PEER_GONE",
                peer_id=self.remote_id,
            )
        await self.send_on(self.primary, message)

    async def send_on(self, channel: LinkChannel, message: object) -> None:
        """Send one message on one of this link's channels (see :meth:`send`)."""
        try:
            await channel.send(message)
        except PeerError as error:
            if self.connected and not self.ended and error.code == "WEBRTC_PEER_GONE":
                logger.info(
                    "data channel %r to %s is closing: %s", channel.label, self.remote_id, error
                )
                channel.mark_closed()
            raise

    def open_channel(self, label: str) -> LinkChannel:
        """Open one more channel on this connection (between p2pdb peers only)."""
        peer = self.channel_peer()
        holder: list[LinkChannel] = []
        raw = self.engine.open_channel(label, deferred_events(holder))
        channel = self._make_channel(raw, label, peer)
        channel.opened_here = True
        holder.append(channel)
        self.extra_channels.append(channel)
        return channel  # its open event follows (both engines deliver it later)

    def channel_peer(self) -> Peer:
        """A fresh :class:`Peer` for one more channel of this link (its own identity, so the
        sessions on two channels, or on a channel and its successor, never mix)."""
        self._channel_count += 1
        return dataclasses.replace(
            self.peer, connection_id=f"{self.peer.connection_id}.{self._channel_count}"
        )

    def _make_channel(
        self, raw: DataChannel, label: str, peer: Peer, compression: FrameCompression | None = None
    ) -> LinkChannel:
        return LinkChannel(
            raw,
            label,
            peer,
            self._settings,
            self._hooks,
            frame_limit=lambda: self._max_frame_bytes,
            compression=compression,
        )

    def dtls_fingerprints(self) -> tuple[str, str] | None:
        """``(local, remote)``: the DTLS certificate fingerprints of this very connection as
        our local and remote descriptions carry them (the engine refuses a certificate that
        does not match the remote one); ``None`` before both descriptions are set."""
        return self.engine.dtls_fingerprints()

    def candidate_pair(self) -> tuple[str, str] | None:
        """Types of the selected local and remote ICE candidates (``None`` if unknown)."""
        return self.engine.candidate_pair()

    # -- negotiation ----------------------------------------------------------------------

    async def _run(self) -> None:
        timeout = self._settings.connect_timeout
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            async with asyncio.timeout_at(deadline):
                engine = self.engine
                label = self.label = self.label or self._on.label(self)
                offer = await (
                    engine.open(self.initiator, label) if label else engine.open(self.initiator)
                )
                if offer is not None:
                    await self._on.send_signal(self, {"type": "offer", "sdp": offer})
                while not self.connected:
                    await self._apply_signal(await self._inbox.get())
            while True:
                await self._apply_signal(await self._inbox.get())
        except TimeoutError:
            if not self.ended:
                self._report(
                    f"No data channel to peer {self.remote_id} within {timeout:g} s",
                    "WEBRTC_CONNECT_TIMEOUT",
                )
        except _LinkFailed:
            pass
        except PeerError as error:  # the engine cannot go on, and said why
            self._on.error(self, error)
        except Exception as error:  # the engine failed in a way we did not foresee
            # the error goes out once, on the errors stream; the traceback only at debug
            logger.debug("link to %s failed", self.remote_id, exc_info=True)
            self._report(
                f"Connection to peer {self.remote_id} failed: {error!r}",
                "WEBRTC_CONNECTION_FAILED",
            )
        finally:
            self.end()
            await self.engine.close()

    async def _apply_signal(self, data: dict[str, Any] | None) -> None:
        if data is None:  # the wake-up sent when the channel opened
            return
        kind = data.get("type")
        if kind in ("offer", "answer"):
            await self._apply_description(str(kind), data.get("sdp"))
        elif kind == "candidate":
            if self._remote_description_set:
                await self._add_candidate(data)
            elif len(self._pending_candidates) < _MAX_PENDING_CANDIDATES:
                self._pending_candidates.append(data)
        elif kind in ("renegotiate", "transceiverRequest"):
            logger.info("%r signal from %s ignored (no media in p2pdb)", kind, self.remote_id)
        else:
            logger.info("unknown signal %r from %s ignored", kind, self.remote_id)

    async def _apply_description(self, kind: str, sdp: object) -> None:
        if kind != ("answer" if self.initiator else "offer") or self._remote_description_set:
            logger.info("unexpected %r from %s ignored", kind, self.remote_id)
            return
        if not isinstance(sdp, str):
            self._report(
                f"Peer {self.remote_id} sent an {kind} without SDP", "WEBRTC_SIGNAL_INVALID"
            )
            raise _LinkFailed
        answer = await self.engine.apply_remote(kind, sdp)
        self._remote_description_set = True
        self._max_frame_bytes = frame_limit(sdp, self._settings.max_frame_bytes)
        if answer is not None:
            await self._on.send_signal(self, {"type": "answer", "sdp": answer})
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            await self._add_candidate(candidate)

    async def _add_candidate(self, data: dict[str, Any]) -> None:
        """Add ``{"candidate": {"candidate", "sdpMLineIndex", "sdpMid"}}`` (any form); a
        malformed or unreadable one is reported and skipped, never fatal."""
        body = data.get("candidate")
        text = body.get("candidate") if isinstance(body, dict) else None
        if not isinstance(body, dict) or not isinstance(text, str):
            self._report(
                f"Peer {self.remote_id} sent a malformed candidate",
                "WEBRTC_SIGNAL_INVALID",
                drop=False,
            )
            return
        text = text.strip().removeprefix("a=").removeprefix("candidate:")
        mid, index = body.get("sdpMid"), body.get("sdpMLineIndex")
        try:
            await self.engine.add_candidate(
                text,
                mid if isinstance(mid, str) else None,
                index if type(index) is int else None,
            )
        except PeerError as error:
            self._on.error(self, error)

    # -- what the engine tells us (guarded: never raises into the engine) ----------------

    def _engine_events(self) -> EngineEvents:
        def call(method: Callable[..., Any]) -> Callable[..., Any]:
            return guarded(logger, self.remote_id, method)

        def frame(data: str | bytes) -> None:
            if self.primary is not None:
                self.primary.feed(data)

        def low() -> None:
            if self.primary is not None:
                self.primary.notify_low()

        return EngineEvents(
            channel=self._on_channel,
            opened=call(self._on_channel_open),
            frame=call(frame),
            low=call(low),
            closed=call(self._on_closed),
            state=call(self._on_state),
            error=call(self._on_engine_error),
            extra_channel=self._on_extra_channel,
        )

    def _on_channel(self, channel: SendChannel) -> bool:
        if self.ended:
            return False
        label = str(getattr(channel, "label", "") or "")
        self.primary = self._make_channel(
            cast(DataChannel, channel), label, self.peer, self.compression
        )
        self.primary.route(lambda _channel, message: self._on.message(self, message))
        return True

    def _on_extra_channel(self, raw: DataChannel) -> ChannelEvents | None:
        if self.ended or not self.connected:
            return None
        try:
            label = str(raw.label)
            channel = self._make_channel(raw, label, self.channel_peer())
            if not self._on.channel(self, channel):
                return None
        except Exception:
            logger.exception("an extra channel from %s failed", self.remote_id)
            return None
        self.extra_channels.append(channel)
        return channel.events()

    def _on_channel_open(self) -> None:
        if self.ended or self.connected or self.primary is None:
            return
        self.connected = True
        self.primary.mark_open()  # its hook calls back here: connected already
        self._inbox.put_nowait(None)  # let the task leave the connect timeout
        self._on.opened(self)

    def _channel_opened(self, channel: LinkChannel) -> None:
        if channel is self.primary:
            self._on_channel_open()
        elif not self.ended:
            self._on.channel_opened(self, channel)

    def _channel_closed(self, channel: LinkChannel) -> None:
        if channel in self.extra_channels:
            self.extra_channels.remove(channel)
        if self.ended:
            return
        self._on.channel_closed(self, channel)
        if channel is self.primary and not self.multiplexed:
            self.end()  # RxDB's rule: its one channel closing ends the connection

    def _bad_frame(self, channel: LinkChannel, error: PeerError) -> None:
        if self.ended:
            return
        self._on.error(self, error)  # logged once, by whoever reads the errors stream
        self.end()

    def _on_closed(self) -> None:
        if not self.ended:
            logger.info("data channel to %s closed", self.remote_id)
            if self.primary is not None:
                self.primary.mark_closed()

    def _on_state(self, state: str) -> None:
        if self.ended:
            return
        if state == "failed":
            self._report(f"Connection to peer {self.remote_id} failed", "WEBRTC_CONNECTION_FAILED")
        elif state in ("disconnected", "closed"):
            logger.info("connection to %s %s", self.remote_id, state)
            self.end()

    def _on_engine_error(self, error: PeerError, end: bool) -> None:
        if self.ended:
            return
        self._on.error(self, error)  # logged once, by whoever reads the errors stream
        if end:
            self.end()

    def _report(self, message: str, code: str, *, drop: bool = True) -> None:
        # not logged here: the handler's errors stream carries it, and the pool logs it once
        self._on.error(self, PeerError(message, code=code, peer_id=self.remote_id))
        if drop:
            self.end()
