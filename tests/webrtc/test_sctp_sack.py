"""Delayed SACKs (plugins/replication_webrtc/sctp_sack.py) on a real aiortc channel pair,
against an unpatched aiortc peer in another process."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path
from typing import Any

import aioice.ice
import aiortc
import orjson
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc_pair import pair
from webrtc_helpers import HandlerMaker

from p2pdb.plugins.replication_webrtc import aiortc_patches, sctp_sack

CHILD = Path(__file__).with_name("sack_child.py")
COUNT = 2000  # messages each way
SIZE = 1000  # bytes each: one SCTP packet per message


class Child:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    def send(self, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(fields) + b"\n")

    async def read(self, within: float = 60) -> dict[str, Any]:
        assert self.process.stdout is not None
        async with asyncio.timeout(within):
            line = await self.process.stdout.readline()
        assert line, "the child exited"
        result: dict[str, Any] = orjson.loads(line)
        return result


@pytest.fixture
def loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        aioice.ice, "get_host_addresses", lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]
    )


@pytest.mark.skipif(not sctp_sack.supported(), reason="aiortc version not checked")
async def test_delayed_sacks_interoperate_with_an_unpatched_peer(loopback: None) -> None:
    env = {**os.environ, sctp_sack.ENV_VARIABLE: "0"}  # the child is the unpatched peer
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(CHILD),
        "answerer",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env=env,
        limit=2**24,
    )
    child = Child(process)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        channel = pc.createDataChannel("sack-test", ordered=True)
        assert sctp_sack.enable(channel.transport)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        received: list[int] = []
        all_in = asyncio.Event()

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            received.append(int(str(message)[:8]))
            if len(received) == COUNT:
                all_in.set()

        await pc.setLocalDescription(await pc.createOffer())
        child.send(sdp=pc.localDescription.sdp)
        answer = await child.read()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        async with asyncio.timeout(30):
            await opened.wait()
        assert (await child.read())["event"] == "open"

        # the unpatched peer sends; we acknowledge with delayed SACKs
        before = sctp_sack.SackCounts(**vars(sctp_sack.counts()))
        child.send(cmd="send", count=COUNT, size=SIZE)
        async with asyncio.timeout(60):
            await all_in.wait()
        assert received == list(range(COUNT))
        assert (await child.read())["event"] == "sent"
        counts = sctp_sack.counts()
        packets = counts.packets - before.packets
        sent = counts.sent - before.sent
        for_gaps = counts.for_gaps - before.for_gaps  # loss on a loaded machine: at once
        assert packets >= COUNT  # one packet per message at least
        assert sent < packets
        delayed = counts.delayed - before.delayed  # a pause of 200 ms on a loaded machine
        # a SACK every second packet (or from the timer); never fewer, except that a SACK
        # sent at once for a gap also covers the packet waiting for its pair (the runs of
        # packets between them, at most for_gaps + 1, leave one over each at most), and that
        # a third packet within QUIET_DELAY of a quiet spell's second is acknowledged with them
        quiet = counts.quiet - before.quiet
        rest = packets - for_gaps
        lowest = (rest - for_gaps - quiet) // 2 - 1
        highest = rest // 2 + 1 + delayed
        assert lowest <= sent - for_gaps <= highest, (sent, packets, for_gaps, quiet)

        # we send; the unpatched peer receives every message, in order
        filler = "z" * (SIZE - 8)
        drained = asyncio.Event()
        channel.bufferedAmountLowThreshold = 128 * 1024
        channel.on("bufferedamountlow", drained.set)
        for i in range(COUNT):
            channel.send(f"{i:08d}{filler}")
            if channel.bufferedAmount > 512 * 1024:
                drained.clear()
                await drained.wait()
        child.send(cmd="report", expect=COUNT)
        report = await child.read()
        assert report == {"event": "report", "count": COUNT, "in_order": True}
    finally:
        child.send(cmd="quit")
        await pc.close()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.mark.skipif(not sctp_sack.supported(), reason="aiortc version not checked")
async def test_after_a_quiet_spell_the_sack_waits_for_the_application_turn(
    loopback: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pair("quiet-sack-test") as (ours, theirs):
        assert sctp_sack.enable(theirs.transport)  # the receiver's SACKs
        loop = asyncio.get_running_loop()
        turns: list[tuple[str, int]] = []  # (message, SACKs sent at delivery / a turn later)
        second_turns = asyncio.Event()
        sacked = asyncio.Event()
        send_now = sctp_sack._send_now

        async def observed(*args: Any) -> None:
            await send_now(*args)
            sacked.set()

        monkeypatch.setattr(sctp_sack, "_send_now", observed)

        def next_turn(message: str) -> None:
            turns.append(("next turn", sctp_sack.counts().sent))
            if message == "second":
                second_turns.set()

        def on_message(message: str | bytes) -> None:
            turns.append((str(message), sctp_sack.counts().sent))
            loop.call_soon(next_turn, str(message))

        theirs.on("message", on_message)
        ours.send("first")  # its SACK waits for a second packet (or DELAY)
        await asyncio.sleep(sctp_sack.QUIET * 3)  # the quiet spell under test
        sent = sctp_sack.counts().sent
        sacked.clear()
        ours.send("second")  # a second packet after a quiet spell
        async with asyncio.timeout(10):
            await second_turns.wait()
        assert turns[2:] == [("second", sent), ("next turn", sent)]  # not in its turn
        async with asyncio.timeout(sctp_sack.DELAY / 2):  # QUIET_DELAY later, not DELAY
            await sacked.wait()
        assert sctp_sack.counts().sent == sent + 1


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(sctp_sack.ENV_VARIABLE, "0")
    assert not sctp_sack.enabled_by_environment()
    assert sctp_sack.enable(object()) is False  # type: ignore[arg-type]
    monkeypatch.setenv(sctp_sack.ENV_VARIABLE, "1")
    assert sctp_sack.enabled_by_environment()


def test_an_unknown_aiortc_version_is_left_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(sctp_sack.ENV_VARIABLE, raising=False)
    monkeypatch.setattr(aiortc, "__version__", "0.0.1")
    monkeypatch.setattr(aiortc_patches, "_logged", set())
    with caplog.at_level(logging.DEBUG, logger="p2pdb.webrtc.sctp_sack"):
        assert sctp_sack.enable(object()) is False  # type: ignore[arg-type]
        assert sctp_sack.enable(object()) is False  # type: ignore[arg-type]
    lines = [r for r in caplog.records if "not among the versions" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.DEBUG


@pytest.mark.skipif(not sctp_sack.supported(), reason="aiortc version not checked")
@pytest.mark.parametrize("delayed", [True, False])
async def test_the_handler_option_switches_it(
    make_handler: HandlerMaker, monkeypatch: pytest.MonkeyPatch, delayed: bool
) -> None:
    monkeypatch.delenv(sctp_sack.ENV_VARIABLE, raising=False)
    # delayed SACKs are a patch of aiortc's SCTP: this test pins that engine
    _, a = await make_handler(delayed_sack=delayed, engine="aiortc")
    _, b = await make_handler(delayed_sack=delayed, engine="aiortc")
    peer_b, _peer_a = await a.connect(), await b.connect()
    before = sctp_sack.SackCounts(**vars(sctp_sack.counts()))
    big = {"documents": [{"id": f"d{i}", "text": "p2pdb " * 150} for i in range(300)]}
    await a.handler.send(peer_b, big)
    assert (await b.message(within=30)).data == big
    packets = sctp_sack.counts().packets - before.packets
    if delayed:
        assert packets > 0 and sctp_sack.counts().sent - before.sent < packets
    else:
        assert packets == 0  # aiortc's own method: never counted
