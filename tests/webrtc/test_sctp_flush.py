"""Flushing sends at once (plugins/replication_webrtc/sctp_flush.py) on a real aiortc channel
pair on loopback: one side patched, the other aiortc as it is."""

from __future__ import annotations

import asyncio

import aioice.ice
import pytest
from aiortc import RTCDataChannel
from aiortc_pair import pair

from p2pdb.plugins.replication_webrtc import sctp_flush
from p2pdb.replication.lanes import URGENT_SEND

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
    async with pair("flush-test") as (ours, theirs):
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


@pytest.mark.skipif(not sctp_flush.supported(), reason="aiortc version not checked")
async def test_urgent_frames_go_ahead_of_the_queued_ones_in_their_own_order(
    loopback: None,
) -> None:
    async with pair("flush-test") as (ours, theirs):
        assert sctp_flush.enable(ours.transport)
        got: list[str] = []
        done = asyncio.Event()

        def on_message(message: str | bytes) -> None:
            got.append(str(message)[:12])
            if len(got) == COUNT + 2:
                done.set()

        theirs.on("message", on_message)
        filler = "z" * (SIZE - 12)
        for i in range(COUNT):  # far past SCTP's congestion window: most wait in the queue
            ours.send(f"bulk{i:08d}{filler}")
        assert ours.bufferedAmount > SIZE * 10  # many frames still wait

        def urgent(n: int) -> None:
            URGENT_SEND.set(True)  # a callback's copied context: only this send is urgent
            ours.send(f"live{n:08d}")

        loop = asyncio.get_running_loop()
        loop.call_soon(urgent, 0)
        loop.call_soon(urgent, 1)
        async with asyncio.timeout(60):
            await done.wait()
        lives = [got.index(f"live{n:08d}") for n in range(2)]
        assert lives[0] < lives[1] < COUNT // 2, lives  # ahead of most bulk frames, in order
        bulk = [m for m in got if m.startswith("bulk")]
        assert bulk == [f"bulk{i:08d}" for i in range(COUNT)]  # the others keep their order


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sctp_flush.ENV_VARIABLE, "0")
    assert not sctp_flush.enabled_by_environment()
    assert not sctp_flush.enable(object())  # type: ignore[arg-type]  # nothing is patched


def test_an_unchecked_aiortc_version_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sctp_flush, "CHECKED_AIORTC_VERSIONS", frozenset({"0.0.1"}))
    assert not sctp_flush.supported()
    assert not sctp_flush.enable(object())  # type: ignore[arg-type]
