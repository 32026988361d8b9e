"""The aiortc engine under a :class:`~.link.Link` (the default; see :mod:`.engine`).

:class:`AiortcEngine` makes one ``RTCPeerConnection`` (on the configured host addresses,
:mod:`.ice`), creates the ordered in-band channel labelled with 40 hex chars as initiator
or takes the one it is given as responder, turns on delayed SACKs (:mod:`.sctp_sack`) and
flushing sends at once (:mod:`.sctp_flush`),
adds trickled candidates (:mod:`.candidates`: ``.local`` names resolved in the background)
and closes it all within a bound.
"""

from __future__ import annotations

import logging

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from p2pdb.errors import PeerError
from p2pdb.tokens import random_token

from . import sctp_flush, sctp_sack
from .candidates import CandidateAdder
from .engine import (
    ChannelEvents,
    EngineEvents,
    LinkSettings,
    close_within,
    guarded,
    relay_missing,
    unusable_description,
)
from .ice import host_addresses_override
from .sdp import dtls_fingerprint, local_sdp

__all__ = ["AiortcEngine"]

logger = logging.getLogger("p2pdb.webrtc.link")


class AiortcEngine:
    """One aiortc peer connection; a :class:`~.engine.LinkEngine`."""

    def __init__(self, settings: LinkSettings, remote_id: str, events: EngineEvents) -> None:
        self.remote_id = remote_id
        self.pc: RTCPeerConnection | None = None
        """The peer connection, ``None`` before :meth:`open`."""
        self.channel: RTCDataChannel | None = None
        """The data channel, once made or given."""
        self._settings = settings
        self._events = events
        self._candidates: CandidateAdder | None = None

    async def open(self, initiator: bool, label: str | None = None) -> str | None:
        """See :meth:`.engine.LinkEngine.open`."""
        with host_addresses_override(self._settings.host_addresses):
            self.pc = pc = RTCPeerConnection(self._settings.rtc_configuration())
        self._candidates = CandidateAdder(pc, self.remote_id)
        pc.on("connectionstatechange", guarded(logger, self.remote_id, self._on_pc_state))
        pc.on("datachannel", guarded(logger, self.remote_id, self._on_datachannel))
        if not initiator:
            return None
        self._attach(pc.createDataChannel(label or random_token(20), ordered=True))
        with host_addresses_override(self._settings.host_addresses):
            await pc.setLocalDescription(await pc.createOffer())
        return self._signalled_sdp(pc)

    def open_channel(self, label: str, events: ChannelEvents) -> RTCDataChannel:
        """See :meth:`.engine.LinkEngine.open_channel` (aiortc opens it at once on an
        established association)."""
        assert self.pc is not None
        channel = self.pc.createDataChannel(label, ordered=True)
        self._wire(channel, events)
        return channel

    async def apply_remote(self, kind: str, sdp: str) -> str | None:
        """See :meth:`.engine.LinkEngine.apply_remote`."""
        pc = self.pc
        assert pc is not None
        # the tasks aiortc starts here (ICE, DTLS) gather and connect on our host addresses
        with host_addresses_override(self._settings.host_addresses):
            try:
                await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type=kind))
            except Exception as error:
                raise unusable_description(self.remote_id, kind, error) from error
            if kind != "offer":
                return None
            await pc.setLocalDescription(await pc.createAnswer())
        return self._signalled_sdp(pc)

    async def add_candidate(self, text: str, mid: str | None, index: int | None) -> None:
        """See :meth:`.engine.LinkEngine.add_candidate`."""
        assert self._candidates is not None
        if not text:
            await self._candidates.add(None)  # end of candidates
            return
        try:
            candidate = candidate_from_sdp(text)
        except (AssertionError, ValueError, IndexError) as error:
            raise PeerError(
                f"Peer {self.remote_id} sent an unreadable candidate {text[:80]!r}",
                code="WEBRTC_SIGNAL_INVALID",
                peer_id=self.remote_id,
            ) from error
        candidate.sdpMid = mid
        candidate.sdpMLineIndex = index
        if mid is None and index is None:
            candidate.sdpMLineIndex = 0  # one m-line: the data channel
        with host_addresses_override(self._settings.host_addresses):
            await self._candidates.add(candidate)  # never raises: one bad candidate is skipped

    def dtls_fingerprints(self) -> tuple[str, str] | None:
        """See :meth:`.engine.LinkEngine.dtls_fingerprints` (aiortc refuses a certificate
        that does not match the remote one)."""
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

    async def close(self) -> None:
        """See :meth:`.engine.LinkEngine.close`."""
        if self._candidates is not None:
            await self._candidates.close()
        if self.channel is not None:
            self.channel.close()
        if self.pc is not None:
            await close_within(self.pc.close(), logger, f"the connection to {self.remote_id}")

    def _signalled_sdp(self, pc: RTCPeerConnection) -> str:
        """Our description with every candidate; with ``relay_only``, fail at once if
        gathering found no relay candidate (aioice drops a failed TURN allocation)."""
        sdp = local_sdp(pc)
        if self._settings.relay_only and " typ relay" not in sdp:
            raise relay_missing(self.remote_id, self._settings.ice_servers)
        return sdp

    # -- aiortc callbacks (guarded: never raise into aiortc) -------------------------------

    def _attach(self, channel: RTCDataChannel) -> None:
        if not self._events.channel(channel):
            return  # the link has ended
        self.channel = channel
        if self._settings.delayed_sack:
            sctp_sack.enable(channel.transport)
        sctp_flush.enable(channel.transport)
        on = self._events
        self._wire(channel, ChannelEvents(on.opened, on.frame, on.low, on.closed))

    def _wire(self, channel: RTCDataChannel, events: ChannelEvents) -> None:
        channel.on("message", events.frame)
        channel.on("bufferedamountlow", events.low)
        channel.on("open", events.opened)
        channel.on("close", events.closed)
        if channel.readyState == "open":  # a responder's or remote's channel arrives open
            events.opened()

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self.channel is None:
            self._attach(channel)
            return
        events = self._events.extra_channel(channel)
        if events is None:
            logger.info("extra data channel %r from %s refused", channel.label, self.remote_id)
            channel.close()
            return
        self._wire(channel, events)

    def _on_pc_state(self) -> None:
        assert self.pc is not None
        self._events.state(self.pc.connectionState)
