"""SignalingClient against the real signaling server: joining, members, pings, reconnects."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from webrtc_helpers import WAIT

from p2pdb.errors import ValidationError
from p2pdb.plugins.replication_webrtc import start_signaling_server
from p2pdb.plugins.replication_webrtc.signaling_client import SignalingClient
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

ROOM = "client-room"


class Recorder:
    """A client whose callbacks feed queues."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.ready: asyncio.Queue[str] = asyncio.Queue()
        self.members: asyncio.Queue[list[str]] = asyncio.Queue()
        self.signals: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.lost: asyncio.Queue[None] = asyncio.Queue()
        self.client = SignalingClient(
            url,
            ROOM,
            on_ready=self.ready.put_nowait,
            on_members=self.members.put_nowait,
            on_signal=self.signals.put_nowait,
            on_lost=lambda: self.lost.put_nowait(None),
            **kwargs,
        )

    @staticmethod
    async def next(queue: asyncio.Queue[Any], within: float = WAIT) -> Any:
        async with asyncio.timeout(within):
            return await queue.get()


@pytest.fixture
async def recorders() -> AsyncIterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(url: str, **kwargs: Any) -> Recorder:
        recorder = Recorder(url, **kwargs)
        made.append(recorder)
        recorder.client.start()
        return recorder

    yield make
    for recorder in made:
        await recorder.client.close()


async def test_join_members_and_signals(
    signaling: SignalingServer, recorders: Callable[..., Recorder]
) -> None:
    a = recorders(signaling.url)
    a_id = await a.next(a.ready)
    assert await a.next(a.members) == []  # our own id is left out
    b = recorders(signaling.url)
    b_id = await b.next(b.ready)
    assert await b.next(b.members) == [a_id]
    assert await a.next(a.members) == [b_id]
    assert a.client.joined and a.client.own_peer_id == a_id and a.client.members == (b_id,)
    assert await a.client.send_signal(b_id, {"type": "offer", "sdp": "x"}, "cid0123456")
    signal = await b.next(b.signals)
    assert signal == {
        "type": "signal",
        "room": ROOM,
        "senderPeerId": a_id,
        "receiverPeerId": b_id,
        "data": {"type": "offer", "sdp": "x"},
        "connectionId": "cid0123456",
    }
    await b.client.close()
    assert await a.next(a.members) == []
    assert not await b.client.send_signal(a_id, {})  # closed: dropped, not raised


async def test_pings_keep_a_client_in_the_room() -> None:
    async with await start_signaling_server(port=0, ping_timeout=0.3) as server:
        recorder = Recorder(server.url, ping_interval=0.05)
        recorder.client.start()
        try:
            first = await recorder.next(recorder.ready)
            with pytest.raises(TimeoutError):  # 4 eviction deadlines pass without a drop
                await recorder.next(recorder.lost, within=1.2)
            assert recorder.client.own_peer_id == first
        finally:
            await recorder.client.close()


async def test_an_evicted_client_reconnects_with_a_new_id() -> None:
    async with await start_signaling_server(port=0, ping_timeout=0.3) as server:
        recorder = Recorder(server.url, ping_interval=60)
        recorder.client.start()
        try:
            first = await recorder.next(recorder.ready)
            await recorder.next(recorder.lost)
            assert recorder.client.own_peer_id is None and not recorder.client.joined
            second = await recorder.next(recorder.ready)
            assert second != first
            async with asyncio.timeout(WAIT):
                await recorder.client.wait_joined()
        finally:
            await recorder.client.close()


async def test_client_keeps_retrying_until_the_server_appears() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    recorder = Recorder(f"ws://127.0.0.1:{port}", reconnect_delay_min=0.05)
    recorder.client.start()
    try:
        with pytest.raises(TimeoutError):
            await recorder.next(recorder.ready, within=0.3)  # several attempts fail meanwhile
        async with await start_signaling_server(port=port):
            await recorder.next(recorder.ready)
            async with asyncio.timeout(WAIT):
                await recorder.client.wait_joined()
            await recorder.client.close()
    finally:
        await recorder.client.close()


async def test_close_while_backing_off_leaves_no_task() -> None:
    before = asyncio.all_tasks()
    recorder = Recorder("ws://127.0.0.1:1")
    recorder.client.start()
    await asyncio.sleep(0.05)
    await recorder.client.close()
    assert asyncio.all_tasks() == before


@pytest.mark.parametrize(
    ("url", "room", "code"),
    [
        ("ws://127.0.0.1:1", "short", "WEBRTC_TOPIC_INVALID"),
        ("ws://127.0.0.1:1", "r" * 100, "WEBRTC_TOPIC_INVALID"),
        ("http://127.0.0.1:1", ROOM, "WEBRTC_SIGNALING_URL_INVALID"),
    ],
)
def test_bad_arguments(url: str, room: str, code: str) -> None:
    with pytest.raises(ValidationError) as info:
        SignalingClient(url, room)
    assert info.value.code == code
