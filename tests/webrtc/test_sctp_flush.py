"""Flushing sends at once (plugins/replication_webrtc/sctp_flush.py) on a real aiortc channel
pair on loopback: one side patched, the other aiortc as it is."""

from __future__ import annotations

import asyncio

import aioice.ice
import pytest
from aiortc import RTCDataChannel
from aiortc_pair import pair

from p2pdb.plugins.replication_webrtc import sctp_flush

COUNT = 600  # messages each way, sent in bursts past SCTP's congestion window
SIZE = 1200


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]
    )


class Inbox:
    def __init__(self, channel: RTCDataChannel) -> None:
        self.got: list[int] = []
        self.full = asyncio.Event()
        channel.on("message", self.on_message)

    def on_message(self, message: str | bytes) -> None:
        self.got.append(int(str(message)[:8]))
        if len(self.got) == COUNT:
            self.full.set()


@pytest.mark.skipif(not sctp_flush.supported(), reason="aiortc version not checked")
async def test_a_patched_send_leaves_before_it_returns_and_order_holds_both_ways(
    loopback: None,
) -> None:
    offerer, answerer, ours, theirs = await pair("flush-test")
    try:
        assert sctp_flush.enable(ours.transport)
        ours_in, theirs_in = Inbox(ours), Inbox(theirs)
        ours.send("00000000 first")
        assert ours.bufferedAmount == 0  # handed to SCTP (and the socket) already
        theirs.send("00000000 first")
        assert theirs.bufferedAmount > 0  # aiortc as it is: flushed by a task, later
        filler = "z" * (SIZE - 8)
        for i in range(1, COUNT):  # one burst each: most wait for SACKs in aiortc's queue
            ours.send(f"{i:08d}{filler}")
            theirs.send(f"{i:08d}{filler}")
        async with asyncio.timeout(60):
            await theirs_in.full.wait()
            await ours_in.full.wait()
        assert theirs_in.got == list(range(COUNT)) and ours_in.got == list(range(COUNT))
    finally:
        await offerer.close()
        await answerer.close()


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sctp_flush.ENV_VARIABLE, "0")
    assert not sctp_flush.enabled_by_environment()
    assert not sctp_flush.enable(object())  # type: ignore[arg-type]  # nothing is patched


def test_an_unchecked_aiortc_version_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sctp_flush, "CHECKED_AIORTC_VERSIONS", frozenset({"0.0.1"}))
    assert not sctp_flush.supported()
    assert not sctp_flush.enable(object())  # type: ignore[arg-type]
