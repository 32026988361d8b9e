"""One WebRTC link: an ``RTCPeerConnection`` attempt to one remote peer and its data channel.

A :class:`Link` negotiates as initiator (offer, one ordered in-band channel
labelled with 40 hex chars) or responder (answer, takes the channel it is
given), applies trickled candidates in either form whenever they arrive,
enforces the connect timeout, and turns channel frames into messages
(:mod:`.framing`). Its owner (the connection handler) decides when links are
made and ended, and hears about them through :class:`LinkCallbacks`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp

from p2pdb.errors import PeerError
from p2pdb.tokens import random_token

from . import sctp_sack
from .candidates import CandidateAdder
from .compression import FrameCompression
from .framing import (
    DEFAULT_MAX_FRAME_BYTES,
    DEFAULT_MAX_MESSAGE_SIZE,
    DEFAULT_MAX_PARTIAL_MESSAGES,
    JSONMessage,
    Reassembler,
    encode_message,
)
from .ice import host_addresses_override
from .peer import Peer
from .sdp import dtls_fingerprint, frame_limit, local_sdp
from .writer import DEFAULT_HIGH_WATER_MARK, DEFAULT_LOW_WATER_MARK, ChannelWriter

__all__ = ["Link", "LinkCallbacks", "LinkSettings"]

logger = logging.getLogger("p2pdb.webrtc.link")

_MAX_QUEUED_SIGNALS = 256
_MAX_PENDING_CANDIDATES = 32
_TEARDOWN_TIMEOUT = 5.0


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
    ) -> None:
        self.local_id = local_id
        self.remote_id = remote_id
        self.initiator = initiator
        self.signal_connection_id = connection_id  # as in signaling (None from old RxDB)
        self.peer = Peer(remote_id, connection_id or random_token(10), initiator)
        self.connected = False
        self.ended = False
        self.task: asyncio.Task[None] | None = None
        self.pc: RTCPeerConnection | None = None
        self.channel: RTCDataChannel | None = None
        self._candidates: CandidateAdder | None = None
        self._on = callbacks
        self._settings = settings
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
        """Send one message (chunked and flow controlled)."""
        if self.ended or not self.connected or self._writer is None:
            raise PeerError(
                f"Peer {self.remote_id} ({self.peer.connection_id}) is not connected",
                code="WEBRTC_PEER_GONE",
                peer_id=self.remote_id,
            )
        frames = self.compression.encode(message, self._max_frame_bytes) or encode_message(
            message, max_frame_bytes=self._max_frame_bytes
        )
        await self._writer.send_frames(frames)

    def dtls_fingerprints(self) -> tuple[str, str] | None:
        """``(local, remote)``: the DTLS certificate fingerprints of this very connection as
        our local and remote descriptions carry them (aiortc refuses a certificate that does
        not match the remote one); ``None`` before both descriptions are set."""
        pc = self.pc
        if pc is None or pc.localDescription is None or pc.remoteDescription is None:
            return None
        local = dtls_fingerprint(pc.localDescription.sdp)
        remote = dtls_fingerprint(pc.remoteDescription.sdp)
        return None if local is None or remote is None else (local, remote)

    def candidate_pair(self) -> tuple[str, str] | None:
        """Types of the selected local and remote ICE candidates (reads aioice internals)."""
        try:
            assert self.pc is not None and self.pc.sctp is not None
            connection = self.pc.sctp.transport.transport._connection
            pair = next(iter(connection._nominated.values()))
            return (str(pair.local_candidate.type), str(pair.remote_candidate.type))
        except (AssertionError, AttributeError, StopIteration):
            return None

    # -- negotiation ----------------------------------------------------------------------

    async def _run(self) -> None:
        timeout = self._settings.connect_timeout
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            with host_addresses_override(self._settings.host_addresses):
                self.pc = pc = RTCPeerConnection(self._settings.rtc_configuration())
                self._candidates = CandidateAdder(pc, self.remote_id)
                pc.on("connectionstatechange", self._guarded(self._on_pc_state))
                pc.on("datachannel", self._guarded(self._on_datachannel))
                async with asyncio.timeout_at(deadline):
                    if self.initiator:
                        channel = pc.createDataChannel(random_token(20), ordered=True)
                        self._attach_channel(channel)
                        await pc.setLocalDescription(await pc.createOffer())
                        self._check_relay_candidates(pc)
                        await self._on.send_signal(self, {"type": "offer", "sdp": local_sdp(pc)})
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
        except Exception as error:  # aiortc failed in a way we did not foresee
            # the error goes out once, on the errors stream; the traceback only at debug
            logger.debug("link to %s failed", self.remote_id, exc_info=True)
            self._report(
                f"Connection to peer {self.remote_id} failed: {error!r}",
                "WEBRTC_CONNECTION_FAILED",
            )
        finally:
            self.end()
            await self._teardown()

    async def _teardown(self) -> None:
        if self._candidates is not None:
            await self._candidates.close()
        if self.channel is not None:
            self.channel.close()
        if self.pc is None:
            return
        try:
            async with asyncio.timeout(_TEARDOWN_TIMEOUT):
                await self.pc.close()
        except TimeoutError:
            # e.g. aioice retrying to delete a TURN allocation on a server that is gone
            logger.warning(
                "closing the connection to %s took over %g s; abandoned",
                self.remote_id,
                _TEARDOWN_TIMEOUT,
            )
        except Exception:
            logger.exception("closing the connection to %s failed", self.remote_id)

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
        pc = self.pc
        assert pc is not None
        if kind != ("answer" if self.initiator else "offer") or self._remote_description_set:
            logger.info("unexpected %r from %s ignored", kind, self.remote_id)
            return
        if not isinstance(sdp, str):
            self._report(
                f"Peer {self.remote_id} sent an {kind} without SDP", "WEBRTC_SIGNAL_INVALID"
            )
            raise _LinkFailed
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
        except Exception as error:
            self._report(
                f"Peer {self.remote_id} sent an unusable {kind}: {error!r}",
                "WEBRTC_SIGNAL_INVALID",
            )
            raise _LinkFailed from error
        self._remote_description_set = True
        self._max_frame_bytes = frame_limit(sdp, self._settings.max_frame_bytes)
        if kind == "offer":
            await pc.setLocalDescription(await pc.createAnswer())
            self._check_relay_candidates(pc)
            await self._on.send_signal(self, {"type": "answer", "sdp": local_sdp(pc)})
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            await self._add_candidate(candidate)

    def _check_relay_candidates(self, pc: RTCPeerConnection) -> None:
        """With ``relay_only``, fail at once if gathering found no relay candidate: aioice
        drops a failed TURN allocation silently, and the link would only time out."""
        if not self._settings.relay_only or " typ relay" in local_sdp(pc):
            return
        urls = [
            url
            for server in self._settings.ice_servers
            for url in ([server.urls] if isinstance(server.urls, str) else server.urls)
            if url.startswith(("turn:", "turns:"))
        ]
        self._report(
            f"No TURN relay candidate for peer {self.remote_id} (relay_only=True): the TURN "
            f"server {', '.join(urls)} refused the allocation or did not answer. Check its "
            "URL, username and credential (short-lived credentials may have expired).",
            "WEBRTC_TURN_FAILED",
        )
        raise _LinkFailed

    async def _add_candidate(self, data: dict[str, Any]) -> None:
        """Add ``{"candidate": {"candidate", "sdpMLineIndex", "sdpMid"}}`` (any form)."""
        assert self._candidates is not None
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
        if not text:
            await self._candidates.add(None)  # end of candidates
            return
        try:
            candidate = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError):
            self._report(
                f"Peer {self.remote_id} sent an unreadable candidate {text[:80]!r}",
                "WEBRTC_SIGNAL_INVALID",
                drop=False,
            )
            return
        mid, index = body.get("sdpMid"), body.get("sdpMLineIndex")
        candidate.sdpMid = mid if isinstance(mid, str) else None
        candidate.sdpMLineIndex = index if type(index) is int else None
        if candidate.sdpMid is None and candidate.sdpMLineIndex is None:
            candidate.sdpMLineIndex = 0  # one m-line: the data channel
        await self._candidates.add(candidate)  # never raises: one bad candidate is skipped

    # -- aiortc callbacks (never raise into aiortc) ---------------------------------------

    def _guarded(self, method: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            try:
                method(*args)
            except Exception:
                logger.exception("error in a WebRTC callback for %s", self.remote_id)

        return call

    def _attach_channel(self, channel: RTCDataChannel) -> None:
        self.channel = channel
        if self._settings.delayed_sack:
            sctp_sack.enable(channel.transport)
        self._writer = writer = ChannelWriter(
            channel,
            high_water_mark=self._settings.high_water_mark,
            low_water_mark=self._settings.low_water_mark,
            peer_id=self.remote_id,
        )
        channel.on("message", self._guarded(self._on_frame))
        channel.on("bufferedamountlow", writer.notify_low)
        channel.on("open", self._guarded(self._on_channel_open))
        channel.on("close", self._guarded(self._on_channel_close))
        if channel.readyState == "open":  # a responder's channel arrives open
            self._on_channel_open()

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self.ended:
            return
        if self.channel is not None:
            logger.info("extra data channel %r from %s ignored", channel.label, self.remote_id)
            return
        self._attach_channel(channel)

    def _on_channel_open(self) -> None:
        if self.ended or self.connected:
            return
        self.connected = True
        self._inbox.put_nowait(None)  # let the task leave the connect timeout
        self._on.opened(self)

    def _on_channel_close(self) -> None:
        if not self.ended:
            logger.info("data channel to %s closed", self.remote_id)
            self.end()

    def _on_pc_state(self) -> None:
        assert self.pc is not None
        state = self.pc.connectionState
        if state in ("failed", "closed") and not self.ended:
            if state == "failed":
                self._report(
                    f"Connection to peer {self.remote_id} failed",
                    "WEBRTC_CONNECTION_FAILED",
                    drop=False,
                )
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
