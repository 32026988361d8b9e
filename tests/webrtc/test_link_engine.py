"""Link's engine-neutral half over a scripted engine (engine.py's LinkEngine seam)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from p2pdb.errors import PeerError
from p2pdb.plugins.replication_webrtc.engine import ChannelEvents, EngineEvents, LinkSettings
from p2pdb.plugins.replication_webrtc.framing import PLAIN_FRAME_BYTES, JSONMessage
from p2pdb.plugins.replication_webrtc.link import Link, LinkCallbacks


class Channel:
    """What ChannelWriter sends on."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.readyState = "open"
        self.bufferedAmount = 0
        self.bufferedAmountLowThreshold = 0
        self.label = ""

    def close(self) -> None:
        self.readyState = "closed"

    def send(self, data: str | bytes) -> None:
        if self.readyState != "open":
            raise RuntimeError("closed")
        self.sent.append(data)


class ScriptedEngine:
    """A LinkEngine whose peer connection is a few lists."""

    made: list[ScriptedEngine] = []

    def __init__(self, settings: LinkSettings, remote_id: str, events: EngineEvents) -> None:
        self.events = events
        self.remotes: list[tuple[str, str]] = []
        self.candidates: list[tuple[str, str | None, int | None]] = []
        self.closed = asyncio.Event()
        self.channel = Channel()
        self.refuse_remote = False
        self.opened_channels: list[tuple[Channel, ChannelEvents]] = []
        ScriptedEngine.made.append(self)

    async def open(self, initiator: bool, label: str | None = None) -> str | None:
        self.channel.label = label or "0" * 40
        assert self.events.channel(self.channel)
        return "offer-sdp" if initiator else None

    def open_channel(self, label: str, events: ChannelEvents) -> Channel:
        channel = Channel()
        channel.label = label
        self.opened_channels.append((channel, events))
        return channel

    async def apply_remote(self, kind: str, sdp: str) -> str | None:
        if self.refuse_remote:
            raise PeerError("refused", code="WEBRTC_SIGNAL_INVALID")
        self.remotes.append((kind, sdp))
        return "answer-sdp" if kind == "offer" else None

    async def add_candidate(self, text: str, mid: str | None, index: int | None) -> None:
        if text == "bad":
            raise PeerError("unreadable", code="WEBRTC_SIGNAL_INVALID")
        self.candidates.append((text, mid, index))

    def dtls_fingerprints(self) -> tuple[str, str] | None:
        return ("ours", "theirs")

    def candidate_pair(self) -> tuple[str, str] | None:
        return None

    async def close(self) -> None:
        self.closed.set()


class Owner:
    def __init__(self) -> None:
        self.signals: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.errors: list[PeerError] = []
        self.messages: list[JSONMessage] = []
        self.opened = asyncio.Event()
        self.ended = asyncio.Event()

    async def send_signal(self, link: Link, data: dict[str, Any]) -> None:
        await self.signals.put(data)

    def callbacks(self) -> LinkCallbacks:
        return LinkCallbacks(
            send_signal=self.send_signal,
            opened=lambda link: self.opened.set(),
            message=lambda link, message: self.messages.append(message),
            error=lambda link, error: self.errors.append(error),
            ended=lambda link: self.ended.set(),
        )


def make_link(owner: Owner, *, initiator: bool, timeout: float = 10.0) -> Link:
    ScriptedEngine.made.clear()
    return Link(
        owner.callbacks(),
        LinkSettings(connect_timeout=timeout),
        local_id="a",
        remote_id="b",
        initiator=initiator,
        connection_id="c",
        engine=ScriptedEngine,
    )


async def open_link(owner: Owner) -> tuple[Link, ScriptedEngine]:
    """An initiator link whose channel opened (its offer sent)."""
    link = make_link(owner, initiator=True)
    engine = ScriptedEngine.made[0]
    link.start()
    await asyncio.wait_for(owner.signals.get(), 5)
    engine.events.opened()
    await asyncio.wait_for(owner.opened.wait(), 5)
    return link, engine


async def test_a_responder_answers_applies_early_candidates_and_carries_messages() -> None:
    owner = Owner()
    link = make_link(owner, initiator=False)
    engine = ScriptedEngine.made[0]
    link.start()
    candidate = {"candidate": "a=candidate:1 1 UDP 1 127.0.0.1 9 typ host", "sdpMid": "0"}
    link.queue_signal({"type": "candidate", "candidate": candidate})
    link.queue_signal({"type": "candidate", "candidate": {"candidate": "bad"}})
    link.queue_signal({"type": "offer", "sdp": "offer-sdp"})
    assert await asyncio.wait_for(owner.signals.get(), 5) == {"type": "answer", "sdp": "answer-sdp"}
    engine.events.opened()
    await asyncio.wait_for(owner.opened.wait(), 5)
    assert engine.remotes == [("offer", "offer-sdp")]
    assert engine.candidates == [("1 1 UDP 1 127.0.0.1 9 typ host", "0", None)]
    assert [error.code for error in owner.errors] == ["WEBRTC_SIGNAL_INVALID"]  # not fatal
    assert not link.ended and link.dtls_fingerprints() == ("ours", "theirs")
    await link.send({"hello": 1})
    assert engine.channel.sent == [b'{"hello":1}']  # plain frames are binary UTF-8
    engine.events.frame('{"back":2}')
    assert owner.messages == [{"back": 2}]
    engine.events.state("closed")
    await asyncio.wait_for(link.wait_closed(), 5)
    assert link.ended and engine.closed.is_set() and len(owner.errors) == 1


async def test_a_large_plain_message_goes_as_binary_rxdb_chunks_of_at_most_16_kib() -> None:
    """A peer that agreed no compression (RxDB) gets binary UTF-8 frames: RxDB's
    simple-peer only wraps those, where it re-encodes a text frame byte by byte in JS."""
    owner = Owner()
    link, engine = await open_link(owner)
    message = {
        "id": "1",
        "result": {"documents": [{"id": f"d{i}", "t": "é" * 500} for i in range(100)]},
    }
    await link.send(message)
    frames = engine.channel.sent
    assert len(frames) > 1 and all(type(f) is bytes and len(f) <= PLAIN_FRAME_BYTES for f in frames)
    chunks = [json.loads(f.decode("utf-8"))["chunk"] for f in frames]
    assert [c["index"] for c in chunks] == list(range(len(frames)))
    assert json.loads("".join(c["data"] for c in chunks)) == message
    for frame in frames:  # and a p2pdb peer reads them back
        engine.events.frame(frame)
    assert owner.messages == [message]
    engine.events.state("closed")
    await asyncio.wait_for(link.wait_closed(), 5)


async def test_an_engine_error_is_reported_once_and_ends_the_link() -> None:
    owner = Owner()
    link = make_link(owner, initiator=True)
    engine = ScriptedEngine.made[0]
    engine.refuse_remote = True
    link.start()
    assert await asyncio.wait_for(owner.signals.get(), 5) == {"type": "offer", "sdp": "offer-sdp"}
    link.queue_signal({"type": "answer", "sdp": "x"})
    await asyncio.wait_for(link.wait_closed(), 5)
    assert [error.code for error in owner.errors] == ["WEBRTC_SIGNAL_INVALID"]
    assert owner.ended.is_set() and engine.closed.is_set()


@pytest.mark.parametrize("how", ["failed", "overflow"])
async def test_a_failed_connection_or_an_engine_report_ends_an_open_link(how: str) -> None:
    owner = Owner()
    link, engine = await open_link(owner)
    if how == "failed":
        engine.events.state("failed")
    else:
        engine.events.error(PeerError("too much", code="WEBRTC_PEER_OVER_LIMIT"), True)
    await asyncio.wait_for(link.wait_closed(), 5)
    expected = "WEBRTC_CONNECTION_FAILED" if how == "failed" else "WEBRTC_PEER_OVER_LIMIT"
    assert [error.code for error in owner.errors] == [expected]
    engine.events.frame('{"late":1}')  # after the end: ignored
    assert owner.messages == []


async def test_a_send_on_a_channel_that_closed_underneath_ends_the_link() -> None:
    owner = Owner()
    link, engine = await open_link(owner)
    engine.channel.readyState = "closed"  # the engine's threads closed it; no event yet
    with pytest.raises(PeerError) as raised:
        await link.send({"x": 1})
    assert raised.value.code == "WEBRTC_PEER_GONE" and link.ended
    await asyncio.wait_for(link.wait_closed(), 5)
    assert owner.errors == []  # the peer left: nothing to report


async def test_no_channel_within_the_connect_timeout() -> None:
    owner = Owner()
    link = make_link(owner, initiator=True, timeout=0.2)
    link.start()
    await asyncio.wait_for(link.wait_closed(), 5)
    assert [error.code for error in owner.errors] == ["WEBRTC_CONNECT_TIMEOUT"]
