"""One WebRTC link on the native engine: libdatachannel instead of aiortc.

:class:`NativeLink` keeps :class:`~.link.Link`'s engine-neutral half unchanged (the bounded
signal inbox, the connect timeout, framing and reassembly, flow-controlled sending through
:class:`~.framing.ChannelWriter`, ``end``/``wait_closed``, typed error reports) and replaces
what touches the engine: negotiation (offer or answer with every candidate inside, trickled
candidates added in either form), the data channel glue (:mod:`.native_bridge`), the DTLS
fingerprints of this very connection (read from the SDPs libdatachannel holds; it refuses
a certificate that does not match the remote one, as aiortc does) and teardown.

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
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Sequence
from typing import Any

from p2pdb.errors import PeerError
from p2pdb.tokens import random_token

from .framing import ChannelWriter
from .ice import LOOPBACK_FALLBACK
from .link import Link
from .native_bridge import (
    ChannelEvents,
    NativeChannel,
    NativeConfig,
    NativePeerConnection,
    free_udp_port,
)
from .native_candidates import NativeCandidateAdder
from .native_engine import host_has_network, load_native, native_ice_urls
from .sdp import answer_as_dtls_server, dtls_fingerprint, frame_limit, split_candidates

__all__ = ["CANDIDATE_HOLD", "NativeLink", "filter_host_candidates"]

logger = logging.getLogger("p2pdb.webrtc.native")

_TEARDOWN_TIMEOUT = 5.0
#: Seconds the answerer holds the offerer's candidates after sending its answer, at most
#: (it releases them as soon as its ICE connects, through the offerer's own checks).
CANDIDATE_HOLD = 1.0
_CANDIDATE_LINE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) (\d+) typ host\b")


class _NativeLinkFailed(Exception):
    """Ends a native link's task after the cause was already reported."""


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


class NativeLink(Link):
    """A :class:`Link` whose connection is libdatachannel's; see the module docstring."""

    native: NativePeerConnection | None = None
    """The native peer connection (for diagnostics), ``None`` before the task made it."""
    native_channel: NativeChannel | None = None
    """The native data channel (for diagnostics and tests that send raw frames)."""
    native_candidates: NativeCandidateAdder | None = None
    """Adds the remote's candidates (``.local`` names resolved in the background)."""
    _announced: tuple[str, ...] | None = None  # the host addresses we announce (None: all)
    _pinned_port: int | None = None  # our socket's port when we chose it
    _hold_timer: asyncio.TimerHandle | None = None  # releases held candidates (answerer)

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

    async def send(self, message: object) -> None:
        """Send one message; a channel that cannot take it any more ends the link first.

        libdatachannel closes a channel (the remote closed it, or the connection went
        away) in its own threads; the ``closed`` event reaches the loop later. A send in
        between finds the channel closed or has its frame refused (``rtcSendMessage``
        fails, -2, "DataChannel is closed" / "transport is not open"). That is the peer
        leaving, as on aiortc, where the channel's state and its ``close`` event change
        together on the loop and the link has ended before any send sees the state: so the
        link ends here, at once (the session stops before the failed send's
        ``WEBRTC_PEER_GONE`` reaches it), and that error is raised to the sender.
        """
        try:
            await super().send(message)
        except PeerError as error:
            if self.connected and not self.ended and error.code == "WEBRTC_PEER_GONE":
                logger.info("data channel to %s is closing: %s", self.remote_id, error)
                self.end()
            raise

    # -- negotiation ----------------------------------------------------------------------

    async def _run(self) -> None:
        settings = self._settings
        deadline = asyncio.get_running_loop().time() + settings.connect_timeout
        try:
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
                on_state=self._guarded(self._on_native_state),
                on_channel=self._guarded(self._on_native_channel),
                on_ice_state=self._guarded(self._on_native_ice_state),
            )
            self.native_candidates = NativeCandidateAdder(
                native.add_candidate, self.remote_id, hold=not self.initiator
            )
            async with asyncio.timeout_at(deadline):
                if self.initiator:
                    self._attach_native(native.create_channel(random_token(20)))
                    sdp = await self._signalled_sdp(native, "offer")
                    await self._on.send_signal(self, {"type": "offer", "sdp": sdp})
                while not self.connected:
                    await self._apply_signal(await self._inbox.get())
            while True:
                await self._apply_signal(await self._inbox.get())
        except TimeoutError:
            if not self.ended:
                self._report(
                    f"No data channel to peer {self.remote_id} within "
                    f"{settings.connect_timeout:g} s",
                    "WEBRTC_CONNECT_TIMEOUT",
                )
        except _NativeLinkFailed:
            pass
        except Exception as error:  # libdatachannel failed in a way we did not foresee
            logger.debug("native link to %s failed", self.remote_id, exc_info=True)
            self._report(
                f"Connection to peer {self.remote_id} failed: {error!r}",
                "WEBRTC_CONNECTION_FAILED",
            )
        finally:
            self.end()
            await self._close_native()

    async def _close_native(self) -> None:
        if self._hold_timer is not None:
            self._hold_timer.cancel()
        if self.native_candidates is not None:
            await self.native_candidates.close()
        if self.native is None:
            return
        try:
            async with asyncio.timeout(_TEARDOWN_TIMEOUT):
                await asyncio.shield(self.native.close())
        except TimeoutError:
            logger.warning(
                "closing the native connection to %s took over %g s; abandoned",
                self.remote_id,
                _TEARDOWN_TIMEOUT,
            )
        except Exception:
            logger.exception("closing the native connection to %s failed", self.remote_id)

    async def _signalled_sdp(self, native: NativePeerConnection, kind: str) -> str:
        """Our description with every candidate, as the remote should see it."""
        sdp = filter_host_candidates(
            await native.describe(kind), self._announced, self._pinned_port
        )
        if self._settings.relay_only and " typ relay" not in sdp:
            self._report(
                f"No TURN relay candidate for peer {self.remote_id} (relay_only=True): the "
                "TURN server refused the allocation or did not answer. Check its URL, "
                "username and credential (short-lived credentials may have expired).",
                "WEBRTC_TURN_FAILED",
            )
            raise _NativeLinkFailed
        return sdp

    async def _apply_description(self, kind: str, sdp: object) -> None:
        native = self.native
        assert native is not None
        if kind != ("answer" if self.initiator else "offer") or self._remote_description_set:
            logger.info("unexpected %r from %s ignored", kind, self.remote_id)
            return
        if not isinstance(sdp, str):
            self._report(
                f"Peer {self.remote_id} sent an {kind} without SDP", "WEBRTC_SIGNAL_INVALID"
            )
            raise _NativeLinkFailed
        held: list[tuple[str, str | None]] = []
        remote_sdp = sdp
        if kind == "offer":  # its candidates are held back (see the module docstring)
            remote_sdp, held = split_candidates(answer_as_dtls_server(sdp))
        try:
            await native.set_remote(remote_sdp, kind)
        except Exception as error:
            self._report(
                f"Peer {self.remote_id} sent an unusable {kind}: {error!r}",
                "WEBRTC_SIGNAL_INVALID",
            )
            raise _NativeLinkFailed from error
        self._remote_description_set = True
        self._max_frame_bytes = frame_limit(sdp, self._settings.max_frame_bytes)
        assert self.native_candidates is not None
        for text, mid in held:
            await self.native_candidates.add(text, mid)
        if kind == "offer":
            answer = await self._signalled_sdp(native, "answer")
            await self._on.send_signal(self, {"type": "answer", "sdp": answer})
            self._hold_timer = asyncio.get_running_loop().call_later(
                CANDIDATE_HOLD, self.native_candidates.release
            )
        pending, self._pending_candidates = self._pending_candidates, []
        for candidate in pending:
            await self._add_candidate(candidate)

    async def _add_candidate(self, data: dict[str, Any]) -> None:
        """Add ``{"candidate": {"candidate", "sdpMLineIndex", "sdpMid"}}``; a malformed one
        is reported, an unusable one logged, and both skipped, never fatal."""
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
            return  # end of candidates: libdatachannel needs no marker
        mid = body.get("sdpMid")
        assert self.native_candidates is not None
        await self.native_candidates.add(f"candidate:{text}", mid if isinstance(mid, str) else None)

    # -- the data channel -----------------------------------------------------------------

    def _attach_native(self, channel: NativeChannel) -> None:
        self.native_channel = channel
        self._writer = writer = ChannelWriter(
            channel,
            high_water_mark=self._settings.high_water_mark,
            low_water_mark=self._settings.low_water_mark,
            peer_id=self.remote_id,
        )
        channel.listen(
            ChannelEvents(
                opened=self._guarded(self._on_channel_open),
                message=self._guarded(self._on_frame),
                closed=self._guarded(self._on_channel_close),
                low=writer.notify_low,
                overflow=self._guarded(self._on_overflow),
            ),
            self._settings.max_message_size,
        )

    def _on_native_channel(self, channel: NativeChannel) -> None:
        if self.ended or self.native_channel is not None:
            logger.info("extra data channel from %s ignored", self.remote_id)
            channel.close()
            return
        self._attach_native(channel)

    def _on_native_state(self, state: str) -> None:
        if self.ended:
            return
        if state == "failed":
            self._report(
                f"Connection to peer {self.remote_id} failed",
                "WEBRTC_CONNECTION_FAILED",
                drop=False,
            )
            self.end()
        elif state in ("disconnected", "closed"):
            logger.info("connection to %s %s", self.remote_id, state)
            self.end()

    def _on_native_ice_state(self, state: str) -> None:
        if state in ("connected", "completed") and self.native_candidates is not None:
            self.native_candidates.release()  # the offerer reached us: it has our answer

    def _on_overflow(self, size: int) -> None:
        if self.ended:
            return
        error = PeerError(
            f"Peer {self.remote_id} sent {size} characters faster than they could be read "
            f"(over max_message_size={self._settings.max_message_size}); dropped",
            code="WEBRTC_PEER_OVER_LIMIT",
            peer_id=self.remote_id,
            limit="receive_backlog",
        )
        self._on.error(self, error)
        self.end()
