"""The native answerer holds the offerer's candidates back until the offerer has our answer.

A libdatachannel 0.24 offerer (RxDB's node-datachannel) that received our connectivity
checks before our answer connects ICE inside ``setRemoteDescription(answer)``, before it
stores the answer, starts DTLS at once and may check our certificate against no
fingerprint ("DTLS alert: unknown CA", ``WEBRTC_CONNECTION_FAILED``; see
``native_candidates.py``). These tests pin the cure: the SDP split, the adder's hold, and a
real libdatachannel answerer that sends no check to the offerer before its hold ends.
Needs ``aiolibdatachannel`` (Python >= 3.12): skipped where it is not installed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("aiolibdatachannel")

from p2pdb.errors import PeerError  # noqa: E402
from p2pdb.plugins.replication_webrtc import native_link  # noqa: E402
from p2pdb.plugins.replication_webrtc.link import Link, LinkCallbacks, LinkSettings  # noqa: E402
from p2pdb.plugins.replication_webrtc.native_bridge import (  # noqa: E402
    NativeConfig,
    NativePeerConnection,
)
from p2pdb.plugins.replication_webrtc.native_candidates import NativeCandidateAdder  # noqa: E402
from p2pdb.plugins.replication_webrtc.native_engine import load_native  # noqa: E402
from p2pdb.plugins.replication_webrtc.sdp import split_candidates  # noqa: E402

OFFER = "\r\n".join(
    [
        "v=0",
        "o=rtc 1 0 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
        "c=IN IP4 0.0.0.0",
        "a=candidate:1 1 UDP 2122317823 127.0.0.1 5000 typ host",
        "a=mid:0",
        "a=setup:actpass",
        "a=candidate:2 1 UDP 2122317822 192.0.2.7 5001 typ host",
        "a=end-of-candidates",
        "",
    ]
)


def test_split_candidates_takes_every_candidate_out_with_its_mid() -> None:
    rest, candidates = split_candidates(OFFER)
    assert candidates == [
        ("candidate:1 1 UDP 2122317823 127.0.0.1 5000 typ host", "0"),
        ("candidate:2 1 UDP 2122317822 192.0.2.7 5001 typ host", "0"),
    ]
    assert "a=candidate" not in rest and "a=end-of-candidates" not in rest
    assert rest.split("\r\n") == [
        line for line in OFFER.split("\r\n") if "candidate" not in line
    ]  # nothing else moved


async def test_a_holding_adder_adds_nothing_until_released() -> None:
    added: list[tuple[str, str | None]] = []
    done = asyncio.Event()

    async def add(text: str, mid: str | None) -> None:
        added.append((text, mid))
        if len(added) == 2:
            done.set()

    adder = NativeCandidateAdder(add, "remote", hold=True)
    try:
        await adder.add("candidate:1 1 UDP 1 192.0.2.1 5000 typ host", "0")
        await adder.add("candidate:2 1 UDP 1 192.0.2.2 5000 typ host", None)
        assert adder.holding and added == []
        adder.release()
        async with asyncio.timeout(5):
            await done.wait()
        assert added == [
            ("candidate:1 1 UDP 1 192.0.2.1 5000 typ host", "0"),
            ("candidate:2 1 UDP 1 192.0.2.2 5000 typ host", None),
        ]
        adder.release()  # idempotent
        await adder.add("candidate:3 1 UDP 1 192.0.2.3 5000 typ host", "0")
        assert not adder.holding and added[-1][0].startswith("candidate:3")
    finally:
        await adder.close()

    dropped = NativeCandidateAdder(add, "remote", hold=True)
    await dropped.add("candidate:4 1 UDP 1 192.0.2.4 5000 typ host", "0")
    await dropped.close()
    dropped.release()  # after close: nothing is added
    assert len(added) == 3


class _Offerer(asyncio.DatagramProtocol):
    """The offerer's UDP socket: records when each datagram (our ICE checks) arrives."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, bytes]] = []
        self.arrived = asyncio.Event()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.arrivals.append((asyncio.get_running_loop().time(), data))
        self.arrived.set()


async def test_the_native_answerer_sends_no_check_before_its_hold_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A real libdatachannel answerer, given an offer whose candidate is a socket of ours
    that never answers: no connectivity check reaches that socket before ``CANDIDATE_HOLD``
    after the answer went out (without the hold the first one comes at once, before the
    answer could reach an offerer), and checks do come once the hold ends."""
    hold = 0.8
    monkeypatch.setattr(native_link, "CANDIDATE_HOLD", hold)
    loop = asyncio.get_running_loop()
    transport, offerer = await loop.create_datagram_endpoint(_Offerer, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    template = NativePeerConnection(
        load_native(), NativeConfig(), on_state=lambda state: None, on_channel=print
    )
    template.create_channel("hold")
    answered: asyncio.Future[float] = loop.create_future()
    errors: list[PeerError] = []

    async def send_signal(link: Any, data: dict[str, Any]) -> None:
        if data.get("type") == "answer" and not answered.done():
            answered.set_result(loop.time())

    callbacks = LinkCallbacks(
        send_signal=send_signal,
        opened=lambda link: None,
        message=lambda link, message: None,
        error=lambda link, error: errors.append(error),
        ended=lambda link: None,
    )
    link = Link(
        callbacks,
        LinkSettings(host_addresses=("127.0.0.1",), connect_timeout=30.0),
        local_id="answerer",
        remote_id="offerer",
        initiator=False,
        connection_id="hold-test",
        engine=native_link.NativeEngine,
    )
    try:
        rest, _ = split_candidates(await template.describe("offer"))
        offer = rest.replace(
            "a=mid:0", f"a=mid:0\r\na=candidate:1 1 UDP 2122317823 127.0.0.1 {port} typ host"
        )
        link.start()
        link.queue_signal({"type": "offer", "sdp": offer})
        async with asyncio.timeout(10):
            answer_at = await answered
            await offerer.arrived.wait()  # the checks after the hold
        first_at, first = offerer.arrivals[0]
        assert first[:2] == b"\x00\x01"  # a STUN Binding request: an ICE check
        assert first_at - answer_at >= hold * 0.95  # none before the hold ended
        assert errors == []
    finally:
        link.end()
        await link.wait_closed()
        await template.close()
        transport.close()
