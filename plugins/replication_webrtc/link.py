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
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from p2pdb.errors import PeerError
from p2pdb.tokens import random_token

from .aiortc_engine import AiortcEngine
from .compression import FrameCompression
from .engine import EngineEvents, EngineFactory, LinkEngine, LinkSettings, guarded
from .framing import JSONMessage, Reassembler, encode_message
from .peer import Peer
from .sdp import frame_limit
from .writer import ChannelWriter, SendChannel

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
        self._writer: ChannelWriter | None = None
        self._max_frame_bytes = settings.max_frame_bytes
        self.compression = FrameCompression(settings.compression)
        self._reassembler = Reassembler(
            max_message_size=settings.max_message_size,
            max_partial_messages=settings.max_partial_messages,
        )

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
        self._reassembler.clear()
        if self._writer is not None:
            self._writer.close()
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
        if self.ended or not self.connected or self._writer is None:
            raise PeerError(
                f"Peer {self.remote_id} ({self.peer.connection_id}) is not connected",
                code="WEBRTC_PEER_GONE",
                peer_id=self.remote_id,
            )
        frames = self.compression.encode(message, self._max_frame_bytes) or encode_message(
            message, max_frame_bytes=self._max_frame_bytes
        )
        try:
            await self._writer.send_frames(frames)
        except PeerError as error:
            if self.connected and not self.ended and error.code == "WEBRTC_PEER_GONE":
                logger.info("data channel to %s is closing: %s", self.remote_id, error)
                self.end()
            raise

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
                offer = await self.engine.open(self.initiator)
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

        return EngineEvents(
            channel=self._on_channel,
            opened=call(self._on_channel_open),
            frame=call(self._on_frame),
            low=call(self._on_low),
            closed=call(self._on_closed),
            state=call(self._on_state),
            error=call(self._on_engine_error),
        )

    def _on_channel(self, channel: SendChannel) -> bool:
        if self.ended:
            return False
        self._writer = ChannelWriter(
            channel,
            high_water_mark=self._settings.high_water_mark,
            low_water_mark=self._settings.low_water_mark,
            peer_id=self.remote_id,
        )
        return True

    def _on_low(self) -> None:
        if self._writer is not None:
            self._writer.notify_low()

    def _on_channel_open(self) -> None:
        if self.ended or self.connected:
            return
        self.connected = True
        self._inbox.put_nowait(None)  # let the task leave the connect timeout
        self._on.opened(self)

    def _on_closed(self) -> None:
        if not self.ended:
            logger.info("data channel to %s closed", self.remote_id)
            self.end()

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

    def _on_frame(self, frame: str | bytes) -> None:
        if self.ended:
            return
        if not self.connected:
            self._on_channel_open()
        try:
            message = self.compression.feed(self._reassembler, frame)
        except PeerError as error:
            error.parameters["peer_id"] = self.remote_id
            self._on.error(self, error)  # logged once, by whoever reads the errors stream
            self.end()
            return
        if message is not None:
            self._on.message(self, message)

    def _report(self, message: str, code: str, *, drop: bool = True) -> None:
        # not logged here: the handler's errors stream carries it, and the pool logs it once
        self._on.error(self, PeerError(message, code=code, peer_id=self.remote_id))
        if drop:
            self.end()
