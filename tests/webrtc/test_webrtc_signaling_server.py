"""The signaling server, driven by raw WebSocket clients speaking RxDB's frames."""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from p2pdb.errors import ValidationError
from p2pdb.plugins.replication_webrtc import start_signaling_server
from p2pdb.plugins.replication_webrtc.signaling_rooms import MemoryRooms
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

ROOM = "room-abc"
WAIT = 5.0


class Client:
    def __init__(self, socket: ClientConnection, peer_id: str) -> None:
        self.socket = socket
        self.id = peer_id

    async def send(self, message: Any) -> None:
        await self.socket.send(message if isinstance(message, str | bytes) else json.dumps(message))

    async def recv(self) -> Any:
        async with asyncio.timeout(WAIT):
            return json.loads(await self.socket.recv())

    async def recv_raw(self) -> str | bytes:
        async with asyncio.timeout(WAIT):
            return await self.socket.recv()

    async def joined(self) -> list[str]:
        message = await self.recv()
        assert message["type"] == "joined"
        ids: list[str] = message["otherPeerIds"]
        return ids

    async def join(self, room: str = ROOM) -> list[str]:
        await self.send({"type": "join", "room": room})
        return await self.joined()

    async def expect_closed(self, code: int, reason_part: str) -> None:
        """Skip pending frames until the server closes the socket; check code and reason."""
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(WAIT):
                while True:
                    await self.socket.recv()
        assert info.value.rcvd is not None, "the server did not send a close frame"
        assert info.value.rcvd.code == code
        assert reason_part in info.value.rcvd.reason


@pytest.fixture
async def server() -> AsyncIterator[SignalingServer]:
    async with await start_signaling_server(port=0, max_message_bytes=4096) as running:
        yield running


@pytest.fixture
async def clients(server: SignalingServer) -> AsyncIterator[Any]:
    opened: list[ClientConnection] = []

    async def open_client() -> Client:
        socket = await connect(server.url)
        opened.append(socket)
        async with asyncio.timeout(WAIT):
            init = json.loads(await socket.recv())
        assert init["type"] == "init"
        return Client(socket, init["yourPeerId"])

    yield open_client
    for socket in opened:
        await socket.close()


async def test_init_gives_a_fresh_12_letter_id(clients: Any, server: SignalingServer) -> None:
    a, b = await clients(), await clients()
    for client in (a, b):
        assert len(client.id) == 12 and set(client.id) <= set(string.ascii_lowercase)
    assert a.id != b.id
    assert server.url == f"ws://127.0.0.1:{server.port}"


async def test_joined_lists_every_member_including_the_receiver(
    clients: Any, server: SignalingServer
) -> None:
    a, b = await clients(), await clients()
    assert await a.join() == [a.id]
    assert await b.join() == [a.id, b.id]
    assert await a.joined() == [a.id, b.id]
    await b.send({"type": "join", "room": ROOM})  # a duplicate join changes nothing
    await b.send({"type": "ping"})
    c = await clients()
    assert await c.join() == [a.id, b.id, c.id]
    assert await a.joined() == [a.id, b.id, c.id]
    assert await b.joined() == [a.id, b.id, c.id]
    await c.socket.close()  # a leave is announced too
    assert await a.joined() == [a.id, b.id]
    assert await b.joined() == [a.id, b.id]
    assert server.rooms() == {ROOM: [a.id, b.id]}


async def test_signal_is_forwarded_verbatim_between_members(clients: Any) -> None:
    a, b = await clients(), await clients()
    await a.join()
    await b.join()
    await a.joined()
    raw = json.dumps(  # spaced JSON: only a verbatim relay keeps it byte for byte
        {
            "type": "signal",
            "room": ROOM,
            "senderPeerId": a.id,
            "receiverPeerId": b.id,
            "data": {"type": "offer", "sdp": "v=0 😀"},
            "connectionId": "abcdefghij",
        },
        ensure_ascii=False,
    )
    await a.send(raw)
    assert await b.recv_raw() == raw
    reply = {"type": "signal", "room": ROOM, "senderPeerId": b.id, "receiverPeerId": a.id}
    await b.send({**reply, "data": {"type": "answer", "sdp": "x"}})
    assert (await a.recv())["data"] == {"type": "answer", "sdp": "x"}


async def test_signal_to_a_departed_peer_is_dropped_quietly(clients: Any) -> None:
    a, b = await clients(), await clients()
    await a.join()
    await b.join()
    await a.joined()
    await b.socket.close()
    assert await a.joined() == [a.id]
    signal = {"type": "signal", "room": ROOM, "senderPeerId": a.id, "receiverPeerId": b.id}
    await a.send({**signal, "data": {}})
    c = await clients()  # a is still connected and served
    await c.join()
    assert await a.joined() == [a.id, c.id]


async def test_spoofed_sender_is_closed_and_announced_as_leaving(clients: Any) -> None:
    a, b = await clients(), await clients()
    await a.join()
    await b.join()
    await a.joined()
    signal = {"type": "signal", "room": ROOM, "senderPeerId": b.id, "receiverPeerId": b.id}
    await a.send({**signal, "data": {}})
    await a.expect_closed(1008, "spoofed sender")
    assert await b.joined() == [b.id]


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('"join"', "not a JSON object"),
        ('{"type": "leave"}', "unknown message type"),
        ('{"room": "room-abc"}', "unknown message type"),
    ],
)
async def test_malformed_frames_close_the_socket(clients: Any, frame: str, reason: str) -> None:
    a = await clients()
    await a.send(frame)
    await a.expect_closed(1008, reason)


@pytest.mark.parametrize("room", ["12345", "x" * 100, 123456, None, ["room-abc"], "😀😀"])
async def test_bad_rooms_close_the_socket(clients: Any, room: Any) -> None:
    a = await clients()
    await a.send({"type": "join", "room": room})
    await a.expect_closed(1008, "invalid room")


@pytest.mark.parametrize("room", ["123456", "y" * 99, "😀😀😀"])  # 😀 is 2 UTF-16 units
async def test_room_length_limits_are_inclusive(clients: Any, room: str) -> None:
    a = await clients()
    assert await a.join(room) == [a.id]


async def test_signal_to_a_peer_outside_the_room_is_rejected(clients: Any) -> None:
    a, c = await clients(), await clients()
    await a.join(ROOM)
    await c.join("other-room")
    signal = {"type": "signal", "room": ROOM, "senderPeerId": a.id, "receiverPeerId": c.id}
    await a.send({**signal, "data": {}})
    await a.expect_closed(1008, "outside the room")


class SlowSharedRooms(MemoryRooms):
    """Rooms shared through a slow store (as Redis): a join is announced to the members
    before its answer reaches the joiner's node."""

    def __init__(self) -> None:
        super().__init__()
        self.answer = asyncio.Event()

    async def join(self, room: str, peer_id: str, max_peers: int) -> bool:
        joined = await super().join(room, peer_id, max_peers)
        await self.answer.wait()
        return joined


async def test_a_member_signalling_a_peer_announced_but_not_yet_answered_is_delivered() -> None:
    """The announced joiner's node has not heard the registry's answer yet: a signal to it
    is a race of the shared registry, not a violation (it once closed the sender's socket,
    and the peer came back with a new id)."""
    rooms = SlowSharedRooms()
    rooms.answer.set()
    async with await start_signaling_server(port=0, rooms=rooms) as server:
        a_socket, b_socket = await connect(server.url), await connect(server.url)
        try:
            ids = [json.loads(await socket.recv())["yourPeerId"] for socket in (a_socket, b_socket)]
            a, b = Client(a_socket, ids[0]), Client(b_socket, ids[1])
            assert await a.join() == [a.id]
            rooms.answer.clear()
            await b.send({"type": "join", "room": ROOM})
            assert await a.joined() == [a.id, b.id]  # announced; b's join not answered yet
            signal = {"type": "signal", "room": ROOM, "senderPeerId": a.id, "receiverPeerId": b.id}
            await a.send({**signal, "data": {"type": "offer"}})
            assert (await b.recv())["type"] == "joined"
            assert (await b.recv())["data"] == {"type": "offer"}  # delivered, a still open
            rooms.answer.set()
            await a.send({**signal, "data": {"type": "again"}})
            assert (await b.recv())["data"] == {"type": "again"}
        finally:
            rooms.answer.set()  # a join still waiting would hold the server's close
            await a_socket.close()
            await b_socket.close()


async def test_signal_naming_a_room_the_sender_did_not_join_is_rejected(clients: Any) -> None:
    a, c = await clients(), await clients()
    await a.join(ROOM)
    await c.join("other-room")
    signal = {"type": "signal", "room": "other-room", "senderPeerId": a.id, "receiverPeerId": c.id}
    await a.send({**signal, "data": {}})
    await a.expect_closed(1008, "has not joined")


async def test_signal_before_joining_is_rejected(clients: Any) -> None:
    a, b = await clients(), await clients()
    await b.join()
    signal = {"type": "signal", "room": ROOM, "senderPeerId": a.id, "receiverPeerId": b.id}
    await a.send({**signal, "data": {}})
    await a.expect_closed(1008, "has not joined")


async def test_oversized_message_closes_the_socket(clients: Any) -> None:
    a, b = await clients(), await clients()
    await a.join()
    await b.join()
    await a.joined()
    signal = {"type": "signal", "room": ROOM, "senderPeerId": a.id, "receiverPeerId": b.id}
    await a.send({**signal, "data": "x" * 5000})  # the fixture caps frames at 4096 bytes
    await a.expect_closed(1009, "")
    assert await b.joined() == [b.id]


async def test_silent_peer_is_evicted_and_announced_as_leaving() -> None:
    async with await start_signaling_server(port=0, ping_timeout=0.4) as server:
        quiet = await connect(server.url)
        chatty = await connect(server.url)
        try:
            a, b = Client(quiet, ""), Client(chatty, "")
            a.id = (await a.recv())["yourPeerId"]
            b.id = (await b.recv())["yourPeerId"]
            await a.join()
            assert await b.join() == [a.id, b.id]

            async def keep_pinging() -> None:
                while True:
                    await b.send({"type": "ping"})
                    await asyncio.sleep(0.05)

            pinger = asyncio.create_task(keep_pinging())
            try:
                await a.expect_closed(1008, "no message for 0.4 s")
                assert await b.joined() == [b.id]  # the eviction is announced as a leave
                assert server.rooms() == {ROOM: [b.id]}
            finally:
                pinger.cancel()
                await asyncio.wait([pinger])
        finally:
            await quiet.close()
            await chatty.close()


async def test_close_disconnects_clients_and_is_idempotent() -> None:
    server = await start_signaling_server(port=0)
    socket = await connect(server.url)
    await socket.recv()
    await server.close()
    await server.close()
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(WAIT):
            await socket.recv()


async def test_ping_timeout_must_be_positive() -> None:
    with pytest.raises(ValidationError) as info:
        await start_signaling_server(port=0, ping_timeout=0)
    assert info.value.code == "WEBRTC_SETTING_INVALID"
