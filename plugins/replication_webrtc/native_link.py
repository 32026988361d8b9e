"""The native engine under a :class:`~.link.Link`: libdatachannel instead of aiortc.

:class:`NativeEngine` is a :class:`~.engine.LinkEngine`: negotiation (offer or answer with
every candidate inside; as answerer the DTLS server, :func:`~.sdp.answer_as_dtls_server`),
trickled candidates added in either form (:mod:`.native_candidates`: ``.local`` names
resolved first), the data channel glue (:mod:`.native_bridge`), the DTLS fingerprints of
this very connection (read from the SDPs libdatachannel holds; it refuses a certificate
that does not match the remote one, as aiortc does) and teardown. The link above it is the
same :class:`~.link.Link` as on aiortc.

Differences from aiortc, each on purpose:

- ``host_addresses``: libdatachannel binds one wildcard UDP socket and announces it on
  every interface but loopback (``aiolibdatachannel`` exposes no bind address), so the list
  selects which addresses we *announce* for that socket, loopback included; it does not
  stop the socket from answering on the others. On a host with only loopback (nothing
  gathered) the socket gets a port we pick, announced on 127.0.0.1.
- ``candidate_pair()`` is ``None``: the wheel does not expose libdatachannel's selected
  pair.
- As the answerer, the remote's candidates (those in the offer and those trickled) are
  held back until our ICE connects, at most ``CANDIDATE_HOLD`` seconds after our answer
  went out, so that our connectivity checks never reach a libdatachannel 0.24 offerer
  (RxDB's node-datachannel) before our answer: see :mod:`.native_candidates`.
- A peer that floods faster than the loop reads is dropped with
  ``WEBRTC_PEER_OVER_LIMIT`` (``limit="receive_backlog"``) once ``max_message_size``
  characters wait; aiortc instead reads the socket only as fast as the loop runs.
- A send on a channel libdatachannel already closed ends the link as ``WEBRTC_PEER_GONE``
  (:meth:`.link.Link.send`).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence

from p2pdb.errors import PeerError
from p2pdb.tokens import random_token

from .engine import (
    ChannelEvents,
    EngineEvents,
    LinkSettings,
    close_within,
    guarded,
    relay_missing,
    unusable_description,
)
from .ice import LOOPBACK_FALLBACK
from .native_bridge import (
    ChannelEvents as ChannelEventsNative,
)
from .native_bridge import (
    NativeChannel,
    NativeConfig,
    NativePeerConnection,
    free_udp_port,
)
from .native_candidates import NativeCandidateAdder
from .native_engine import host_has_network, load_native, native_ice_urls
from .sdp import answer_as_dtls_server, dtls_fingerprint, split_candidates

__all__ = ["CANDIDATE_HOLD", "NativeEngine", "filter_host_candidates"]

logger = logging.getLogger("p2pdb.webrtc.native")
#: Seconds the answerer holds the offerer's candidates after sending its answer, at most
#: (it releases them as soon as its ICE connects, through the offerer's own checks).
CANDIDATE_HOLD = 1.0
_CANDIDATE_LINE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) (\d+) typ host\b")


def filter_host_candidates(
    sdp: str, host_addresses: Sequence[str] | None, port: int | None = None
) -> str:
    """``sdp`` with only the host candidates on ``host_addresses`` (``None``: unchanged).

    libdatachannel binds one wildcard UDP socket and announces it on every interface but
    loopback; a wanted address it did not announce (``127.0.0.1``) is announced on the same
    socket's port, which the wildcard socket receives too (``port``: the socket's port when
    it announced nothing at all, on a host with only loopback).
    """
    if host_addresses is None:
        return sdp
    allowed = set(host_addresses)
    lines = sdp.split("\r\n")
    kept: list[str] = []
    ports: dict[bool, str] = {} if port is None else {False: str(port), True: str(port)}
    seen: set[str] = set()
    for line in lines:
        match = _CANDIDATE_LINE.match(line)
        if match is None:
            kept.append(line)
            continue
        address = match.group(1)
        ports.setdefault(":" in address, match.group(2))
        if address in allowed:
            seen.add(address)
            kept.append(line)
    extra = [
        f"a=candidate:{90 + index} 1 UDP {2130706431 - index} {address} {ports[':' in address]}"
        " typ host"
        for index, address in enumerate(sorted(allowed - seen))
        if (":" in address) in ports
    ]
    if not extra:
        return "\r\n".join(kept)
    media = next((i for i, line in enumerate(kept) if line.startswith("m=")), len(kept))
    at = next(
        (i for i, line in enumerate(kept) if i > media and line.startswith("a=end-of-candidates")),
        len(kept) - 1 if kept and kept[-1] == "" else len(kept),
    )
    return "\r\n".join(kept[:at] + extra + kept[at:])


class NativeEngine:
    """One libdatachannel peer connection; see the module docstring."""

    def __init__(self, settings: LinkSettings, remote_id: str, events: EngineEvents) -> None:
        self.remote_id = remote_id
        self.native: NativePeerConnection | None = None
        """The native peer connection (for diagnostics), ``None`` before :meth:`open`."""
        self.native_channel: NativeChannel | None = None
        """The native data channel (for diagnostics and tests that send raw frames)."""
        self.native_candidates: NativeCandidateAdder | None = None
        """Adds the remote's candidates (``.local`` names resolved in the background)."""
        self._settings = settings
        self._events = events
        self._announced: tuple[str, ...] | None = None  # host addresses we announce (None: all)
        self._pinned_port: int | None = None  # our socket's port when we chose it
        self._hold_timer: asyncio.TimerHandle | None = None  # releases held candidates

    async def open(self, initiator: bool, label: str | None = None) -> str | None:
        """See :meth:`.engine.LinkEngine.open`."""
        settings = self._settings
        core = load_native()
        self._announced, port = settings.host_addresses, None
        if self._announced is None and not settings.relay_only and not host_has_network():
            # libdatachannel gathers nothing on a host with only loopback: bind its
            # socket to a port we know and announce it on 127.0.0.1 (as aiortc does)
            self._announced, port = LOOPBACK_FALLBACK, free_udp_port()
        self._pinned_port = port
        config = NativeConfig(
            ice_urls=native_ice_urls(settings.ice_servers),
            relay_only=settings.relay_only,
            receive_limit=settings.max_message_size,
            port=port or 0,
        )
        self.native = native = NativePeerConnection(
            core,
            config,
            on_state=self._events.state,
            on_ice_state=guarded(logger, self.remote_id, self._on_native_ice_state),
            on_channel=guarded(logger, self.remote_id, self._on_native_channel),
        )
        self.native_candidates = NativeCandidateAdder(
            native.add_candidate, self.remote_id, hold=not initiator
        )
        if not initiator:
            return None
        self._attach(native.create_channel(label or random_token(20)))
        return await self._signalled_sdp(native, "offer")

    def open_channel(self, label: str, events: ChannelEvents) -> NativeChannel:
        """See :meth:`.engine.LinkEngine.open_channel` (libdatachannel opens it at once on
        an established SCTP association)."""
        assert self.native is not None
        channel = self.native.create_channel(label)
        self._listen(channel, events)
        return channel

    def _listen(self, channel: NativeChannel, events: ChannelEvents) -> None:
        channel.listen(
            ChannelEventsNative(
                opened=events.opened,
                message=events.frame,
                closed=events.closed,
                low=events.low,
                overflow=guarded(logger, self.remote_id, self._on_overflow),
            ),
            self._settings.max_message_size,
        )

    async def apply_remote(self, kind: str, sdp: str) -> str | None:
        """See :meth:`.engine.LinkEngine.apply_remote`; we answer as the DTLS server, and
        hold the offer's candidates back (see the module docstring)."""
        native, candidates = self.native, self.native_candidates
        assert native is not None and candidates is not None
        held: list[tuple[str, str | None]] = []
        if kind == "offer":
            sdp, held = split_candidates(answer_as_dtls_server(sdp))
        try:
            await native.set_remote(sdp, kind)
        except Exception as error:
            raise unusable_description(self.remote_id, kind, error) from error
        for text, mid in held:
            await candidates.add(text, mid)
        if kind != "offer":
            return None
        answer = await self._signalled_sdp(native, "answer")
        # the link sends it at once; the hold ends at most CANDIDATE_HOLD after that
        self._hold_timer = asyncio.get_running_loop().call_later(CANDIDATE_HOLD, candidates.release)
        return answer

    async def add_candidate(self, text: str, mid: str | None, index: int | None) -> None:
        """See :meth:`.engine.LinkEngine.add_candidate`; an unusable candidate is logged
        and skipped (:mod:`.native_candidates`)."""
        if not text:
            return  # end of candidates: libdatachannel needs no marker
        assert self.native_candidates is not None
        await self.native_candidates.add(f"candidate:{text}", mid)

    def dtls_fingerprints(self) -> tuple[str, str] | None:
        """``(local, remote)`` DTLS fingerprints from the descriptions libdatachannel holds
        (``None`` before both are set); what the p2pdb handshake signs."""
        native = self.native
        if native is None:
            return None
        local_sdp, remote_sdp = native.local_description, native.remote_description
        if local_sdp is None or remote_sdp is None:
            return None
        local, remote = dtls_fingerprint(local_sdp), dtls_fingerprint(remote_sdp)
        return None if local is None or remote is None else (local, remote)

    def candidate_pair(self) -> tuple[str, str] | None:
        """Always ``None``: aiolibdatachannel does not expose the selected pair."""
        return None

    async def close(self) -> None:
        """See :meth:`.engine.LinkEngine.close`."""
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        if self.native_candidates is not None:
            await self.native_candidates.close()
        if self.native is not None:
            what = f"the native connection to {self.remote_id}"
            await close_within(asyncio.shield(self.native.close()), logger, what)

    async def _signalled_sdp(self, native: NativePeerConnection, kind: str) -> str:
        """Our description with every candidate, as the remote should see it."""
        sdp = filter_host_candidates(
            await native.describe(kind), self._announced, self._pinned_port
        )
        if self._settings.relay_only and " typ relay" not in sdp:
            raise relay_missing(self.remote_id, self._settings.ice_servers)
        return sdp

    # -- the data channel (callbacks guarded: never raise into the bridge) ---------------

    def _attach(self, channel: NativeChannel) -> None:
        if not self._events.channel(channel):
            channel.close()  # the link has ended
            return
        self.native_channel = channel
        on = self._events
        self._listen(channel, ChannelEvents(on.opened, on.frame, on.low, on.closed))

    def _on_native_channel(self, channel: NativeChannel) -> None:
        if self.native_channel is None:
            self._attach(channel)
            return
        events = self._events.extra_channel(channel)
        if events is None:
            logger.info("extra data channel %r from %s refused", channel.label, self.remote_id)
            channel.close()
            return
        self._listen(channel, events)

    def _on_native_ice_state(self, state: str) -> None:
        if state in ("connected", "completed") and self.native_candidates is not None:
            self.native_candidates.release()  # the offerer reached us: it has our answer

    def _on_overflow(self, size: int) -> None:
        limit = self._settings.max_message_size
        error = PeerError(
            f"Peer {self.remote_id} sent {size} characters faster than they could be read "
            f"(over max_message_size={limit}); dropped",
            code="WEBRTC_PEER_OVER_LIMIT",
            peer_id=self.remote_id,
            limit="receive_backlog",
        )
        self._events.error(error, True)
