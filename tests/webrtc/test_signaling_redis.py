"""Signaling nodes sharing rooms through a real ``redis-server`` (no persistence, on a free
loopback port): RxDB's protocol across nodes, the per-room limit counted in Redis, a node
killed with SIGKILL (its members leave, its peers come back through another node), Redis
restarted under running nodes, and p2pdb peers replicating over real WebRTC through
different nodes. These tests fail (never skip) when redis-server is missing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis_helpers import RedisServer, SignalingNode, free_tcp_port, running_redis, wait_until
from replication_helpers import wait_equal
from schemas import PEER_SCHEMA
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

import p2pdb
from p2pdb.errors import ReplicationError, ValidationError
from p2pdb.plugins.replication_webrtc import (
    ReplicationPool,
    aiortc_connection_handler,
    replicate_webrtc,
    start_signaling_server,
)
from p2pdb.plugins.replication_webrtc.signaling_client import SignalingClient
from p2pdb.plugins.replication_webrtc.signaling_limits import CloseReason, SignalingServerOptions
from p2pdb.plugins.replication_webrtc.signaling_redis import RedisOptions, RedisRooms
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

ROOM = "redis-room-1"
WAIT = 10.0
BEAT = 1.0  # heartbeat interval of the test nodes; a silent node is reaped after 3 of them
# (0.3 s reaped live nodes stalled by a loaded machine for ~1 s: their peers lost their ids)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    with running_redis(tmp_path) as server:
        yield server


NodeMaker = Callable[..., Awaitable[SignalingServer]]


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[NodeMaker]:
    """``await nodes(**limits)``: an in-process signaling node on the test Redis."""
    started: list[SignalingServer] = []

    async def make(**limits: Any) -> SignalingServer:
        rooms = RedisRooms(RedisOptions(redis_server.url, BEAT, heartbeat_timeout=3 * BEAT))
        server = await start_signaling_server(
            port=0, options=SignalingServerOptions(**limits), rooms=rooms
        )
        started.append(server)
        return server

    yield make
    for server in started:
        await server.close()


class Raw:
    """A raw RxDB-protocol client."""

    def __init__(self, socket: ClientConnection, peer_id: str) -> None:
        self.socket, self.id = socket, peer_id

    @classmethod
    async def open(cls, url: str) -> Raw:
        socket = await connect(url)
        async with asyncio.timeout(WAIT):
            init = json.loads(await socket.recv())
        return cls(socket, init["yourPeerId"])

    async def recv(self) -> Any:
        async with asyncio.timeout(WAIT):
            return json.loads(await self.socket.recv())

    async def join(self, room: str = ROOM) -> list[str]:
        await self.socket.send(json.dumps({"type": "join", "room": room}))
        message = await self.recv()
        assert message["type"] == "joined"
        ids: list[str] = message["otherPeerIds"]
        return ids

    async def members_until(self, expected: list[str], within: float = WAIT) -> None:
        async with asyncio.timeout(within):
            while (await self.recv())["otherPeerIds"] != expected:
                pass

    def signal(self, to: str, data: Any, room: str = ROOM) -> str:
        frame = {"type": "signal", "room": room, "senderPeerId": self.id, "receiverPeerId": to}
        return json.dumps({**frame, "data": data, "connectionId": "c0nnect10n"})


@pytest.mark.engine_neutral
async def test_a_room_spans_nodes_with_rxdb_frames(nodes: NodeMaker) -> None:
    one, two, three = await nodes(), await nodes(), await nodes()
    a, b, c = [await Raw.open(node.url) for node in (one, two, three)]
    assert await a.join() == [a.id]
    assert await b.join() == [a.id, b.id]  # join order, across nodes
    await a.members_until([a.id, b.id])
    assert await c.join() == [a.id, b.id, c.id]
    for member in (a, b):
        await member.members_until([a.id, b.id, c.id])
    frame = a.signal(c.id, {"type": "offer", "sdp": "v=0"})
    await a.socket.send(frame)
    assert await c.recv() == json.loads(frame)  # relayed as sent, through Redis
    await c.socket.send(c.signal(b.id, {"candidate": "x"}))
    assert (await b.recv())["data"] == {"candidate": "x"}
    await b.socket.close()  # a leave on node two reaches the members on one and three
    await a.members_until([a.id, c.id])
    await c.members_until([a.id, c.id])
    assert one.rooms() == {ROOM: [a.id]} and three.rooms() == {ROOM: [c.id]}
    # a signal to a member of another room on another node is a violation, as on one node
    d = await Raw.open(two.url)
    await d.join("another-room")
    await a.socket.send(a.signal(d.id, {}))
    with pytest.raises(ConnectionClosed) as info:
        await a.recv()
    assert info.value.rcvd is not None
    assert info.value.rcvd.reason.startswith("SIGNALING_PROTOCOL_VIOLATION")
    for client in (a, b, c, d):
        await client.socket.close()


@pytest.mark.engine_neutral
async def test_peers_per_room_are_counted_across_nodes(nodes: NodeMaker) -> None:
    limited = [await nodes(max_peers_per_room=2) for _ in range(3)]
    a, b, c = [await Raw.open(node.url) for node in limited]
    await a.join()
    await b.join()
    await c.socket.send(json.dumps({"type": "join", "room": ROOM}))
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await c.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == CloseReason.ROOM_FULL.close_code
    assert info.value.rcvd.reason.startswith("SIGNALING_ROOM_FULL: ")
    assert limited[2].closes == {"SIGNALING_ROOM_FULL": 1}
    for client in (a, b, c):
        await client.socket.close()


@pytest.mark.engine_neutral
async def test_a_killed_node_s_members_leave_their_rooms(
    redis_server: RedisServer, nodes: NodeMaker
) -> None:
    child = await SignalingNode(redis_server.url, heartbeat=BEAT).start()
    try:
        survivor = await Raw.open((await nodes()).url)
        doomed = await Raw.open(child.url)
        await survivor.join()
        assert await doomed.join() == [survivor.id, doomed.id]
        await survivor.members_until([survivor.id, doomed.id])
        child.kill()
        loop = asyncio.get_running_loop()
        killed_at = loop.time()
        await survivor.members_until([survivor.id], within=WAIT)  # RxDB's update
        took = loop.time() - killed_at
        assert took < 5 * BEAT + 1.0, f"the dead node's member stayed {took:.1f} s"
        await survivor.socket.close()
    finally:
        child.kill()
        await child.stop()


@pytest.mark.engine_neutral
async def test_redis_restarted_under_running_nodes(
    redis_server: RedisServer, nodes: NodeMaker
) -> None:
    one, two = await nodes(), await nodes()
    a = await Raw.open(one.url)
    await a.join()
    redis_server.kill()
    rooms_one = one.registry
    assert isinstance(rooms_one, RedisRooms)
    await wait_until(lambda: not rooms_one.available)
    # A join while Redis is down ends the socket with a typed reason (the client retries).
    b = await Raw.open(two.url)
    await b.socket.send(json.dumps({"type": "join", "room": ROOM}))
    with pytest.raises(ConnectionClosed) as info:
        await b.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1013
    assert info.value.rcvd.reason.startswith("SIGNALING_REDIS_UNAVAILABLE: ")
    redis_server.start()  # the same port, nothing kept
    registries = [node.registry for node in (one, two)]
    await wait_until(lambda: all(isinstance(r, RedisRooms) and r.available for r in registries))
    assert rooms_one.recoveries >= 1
    c = await Raw.open(two.url)
    assert await c.join() == [a.id, c.id]  # a's membership was registered again
    await c.socket.send(c.signal(a.id, {"after": "restart"}))
    message = await a.recv()
    while message["type"] != "signal":  # joined updates come first
        message = await a.recv()
    assert message["data"] == {"after": "restart"}
    for client in (a, b, c):
        await client.socket.close()


@pytest.mark.engine_neutral
async def test_redis_out_of_reach_at_start_is_typed() -> None:
    port = free_tcp_port()
    with pytest.raises(ReplicationError) as info:
        await start_signaling_server(port=0, redis_url=f"redis://user:pw@127.0.0.1:{port}")
    assert info.value.code == "SIGNALING_REDIS_UNAVAILABLE"
    assert "pw" not in str(info.value)
    with pytest.raises(ValidationError):
        RedisOptions("http://127.0.0.1:6379")
    with pytest.raises(ValidationError):
        RedisOptions("redis://127.0.0.1", heartbeat_interval=2, heartbeat_timeout=1)


@pytest.mark.engine_neutral
def test_importing_the_plugin_does_not_import_redis() -> None:
    code = "import sys, p2pdb.plugins.replication_webrtc; print('redis' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.strip() == "False", result.stderr


@pytest.mark.engine_neutral
def test_signaling_urls_are_checked() -> None:
    with pytest.raises(ValidationError) as info:
        aiortc_connection_handler([])
    assert info.value.code == "WEBRTC_SIGNALING_URL_INVALID"
    with pytest.raises(ValidationError):
        aiortc_connection_handler(["ws://127.0.0.1:1", "http://x"])


# -- p2pdb peers over real WebRTC through several nodes ---------------------------------------

TOPIC = "redis-replication-topic"


async def open_peer(tmp_path: Path, name: str, urls: list[str]) -> tuple[Any, ReplicationPool]:
    db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
    todos = await db.add_collection("todos", schema=PEER_SCHEMA)
    factory = aiortc_connection_handler(urls, ice_servers=[], host_addresses=["127.0.0.1"])
    return todos, await replicate_webrtc(todos, TOPIC, factory)


async def test_peers_on_three_nodes_replicate_and_survive_a_killed_node(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    children = [SignalingNode(redis_server.url, heartbeat=BEAT) for _ in range(3)]
    peers: list[tuple[Any, ReplicationPool]] = []
    store = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        urls = [(await child.start()).url for child in children]
        # each peer starts on its own node and fails over to the next ones
        for index in range(3):
            peers.append(await open_peer(tmp_path, f"p{index}", urls[index:] + urls[:index]))
        (a, pool_a), (b, pool_b), (c, pool_c) = peers
        await a.insert({"id": "from-a", "text": "a"})
        await b.insert({"id": "from-b", "text": "b"})
        await c.insert({"id": "from-c", "text": "c"})
        await wait_equal(a, b, c, seconds=30)
        ids_before = [pool.connection.own_peer_id for pool in (pool_a, pool_b, pool_c)]
        lost_b_c: list[Any] = []
        pool_b.errors.subscribe(lost_b_c.append)
        pool_c.errors.subscribe(lost_b_c.append)

        children[0].kill()  # peer a's node, mid-session
        await a.insert({"id": "a-during-failover", "text": "a"})
        await b.insert({"id": "b-during-failover", "text": "b"})
        await wait_equal(a, b, c, seconds=30)  # the open data channels keep replicating
        # a comes back through node two, with a new id
        await wait_until(lambda: pool_a.connection.own_peer_id not in (None, ids_before[0]), 20)
        room = f"p2pdb:signaling:room:{TOPIC}"

        async def room_is_current() -> bool:
            # the dead node was reaped in Redis and a's new id joined (its id is set when its
            # new node welcomes it, a moment before its join reaches Redis)
            members = await store.zrange(room, 0, -1)
            return sorted(members) == sorted([pool_a.connection.own_peer_id, *ids_before[1:]])

        await wait_until(room_is_current, 20)
        await c.insert({"id": "c-after-failover", "text": "c"})
        await a.insert({"id": "a-after-failover", "text": "a"})
        await wait_equal(a, b, c, seconds=30)
        assert len(await a.find()) == 7
        # b and c never noticed: same signaling ids, no error from their pools
        assert [pool_b.connection.own_peer_id, pool_c.connection.own_peer_id] == ids_before[1:]
        assert lost_b_c == []
    finally:
        for _, pool in peers:
            await pool.cancel()
            await pool.collection.database.close()
        await store.aclose()
        for child in children:
            child.kill()
            await child.stop()


async def test_replication_recovers_after_a_redis_restart(
    redis_server: RedisServer, nodes: NodeMaker, tmp_path: Path
) -> None:
    one, two = await nodes(), await nodes()
    a, pool_a = await open_peer(tmp_path, "a", [one.url, two.url])
    b, pool_b = await open_peer(tmp_path, "b", [two.url, one.url])
    c_pool: ReplicationPool | None = None
    try:
        await a.insert({"id": "before", "text": "x"})
        await wait_equal(a, b, seconds=30)
        redis_server.kill()
        await a.insert({"id": "during-the-outage", "text": "x"})
        await wait_equal(a, b, seconds=30)  # data channels do not need signaling
        redis_server.start()
        registries = [node.registry for node in (one, two)]
        await wait_until(lambda: all(isinstance(r, RedisRooms) and r.available for r in registries))
        # a newcomer through node two meets a (on node one) without restarting anything
        c, c_pool = await open_peer(tmp_path, "c", [two.url])
        await wait_equal(a, b, c, seconds=30)
        await c.insert({"id": "from-the-newcomer", "text": "x"})
        await wait_equal(a, b, c, seconds=30)
        assert len(await c.find()) == 3
    finally:
        for pool in (pool_a, pool_b, c_pool):
            if pool is not None:
                await pool.cancel()
                await pool.collection.database.close()


@pytest.mark.engine_neutral
async def test_a_client_moves_to_the_next_url_when_its_server_goes() -> None:
    dead = f"ws://127.0.0.1:{free_tcp_port()}"  # nothing listens there
    async with await start_signaling_server(port=0) as first:
        async with await start_signaling_server(port=0) as second:
            ids: asyncio.Queue[str] = asyncio.Queue()
            client = SignalingClient(
                [dead, first.url, second.url],
                ROOM,
                on_ready=ids.put_nowait,
                reconnect_delay_min=0.05,
            )
            client.start()
            try:
                async with asyncio.timeout(WAIT):
                    await client.wait_joined()  # the dead URL was skipped
                assert client.url == first.url and list(first.rooms()) == [ROOM]
                old = await ids.get()
                await first.close()  # its server goes: the client joins through the next
                async with asyncio.timeout(WAIT):
                    assert await ids.get() != old
                    await client.wait_joined()
                assert client.url == second.url and list(second.rooms()) == [ROOM]
            finally:
                await client.close()


@pytest.mark.engine_neutral
async def test_redis_url_and_rooms_do_not_go_together() -> None:
    with pytest.raises(ValidationError):
        await start_signaling_server(
            port=0, redis_url="redis://127.0.0.1:1", rooms=RedisRooms("redis://127.0.0.1:1")
        )


@pytest.mark.engine_neutral
async def test_the_command_line_node_reports_redis_out_of_reach() -> None:
    port = free_tcp_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pdb",
        "signaling",
        "--port",
        "0",
        "--redis",
        f"redis://127.0.0.1:{port}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        _, err = await process.communicate()
    assert process.returncode == 2
    assert b"[SIGNALING_REDIS_UNAVAILABLE]" in err and len(err.strip().splitlines()) == 1
