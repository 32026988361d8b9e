"""The hardened signaling server through real WebSockets on loopback: every limit trips with
its typed close reason, TLS with a self-signed certificate, the authentication hook, and
bounded floods against a server in a child process whose memory (VmRSS) is measured."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from signaling_child import ChildServer
from stalled_member import StalledMember
from tls_helpers import self_signed
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from p2pdb.errors import ReplicationError, ValidationError
from p2pdb.plugins.replication_webrtc import (
    ConnectionHandler,
    aiortc_connection_handler,
    start_signaling_server,
)
from p2pdb.plugins.replication_webrtc.signaling_limits import CloseReason, SignalingServerOptions
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

ROOM = "hardening-room"
PAIR_SECRET = "a pair secret, long enough"
WAIT = 10.0

Open = Callable[..., Awaitable["Client"]]


class Client:
    """A raw RxDB-protocol client."""

    def __init__(self, socket: ClientConnection, peer_id: str) -> None:
        self.socket = socket
        self.id = peer_id

    async def send(self, message: Any) -> None:
        await self.socket.send(message if isinstance(message, str) else json.dumps(message))

    async def recv(self) -> Any:
        async with asyncio.timeout(WAIT):
            return json.loads(await self.socket.recv())

    async def join(self, room: str = ROOM) -> list[str]:
        await self.send({"type": "join", "room": room})
        message = await self.recv()
        assert message["type"] == "joined"
        ids: list[str] = message["otherPeerIds"]
        return ids

    def signal(self, to: str, data: Any, room: str = ROOM) -> dict[str, Any]:
        return {
            "type": "signal",
            "room": room,
            "senderPeerId": self.id,
            "receiverPeerId": to,
            "data": data,
        }

    async def expect_closed(self, reason: CloseReason | int, within: float = WAIT) -> str:
        """Read until the server closes; check the close code (and the reason's code)."""
        with pytest.raises(ConnectionClosed) as info:
            async with asyncio.timeout(within):
                while True:
                    await self.socket.recv()
        received = info.value.rcvd
        assert received is not None, "the server sent no close frame"
        if isinstance(reason, CloseReason):
            assert received.code == reason.close_code
            assert received.reason.startswith(reason.code + ": "), received.reason
        else:
            assert received.code == reason
        return received.reason


async def open_client(url: str, **kwargs: Any) -> Client:
    socket = await connect(url, **kwargs)
    async with asyncio.timeout(WAIT):
        init = json.loads(await socket.recv())
    return Client(socket, init["yourPeerId"])


@pytest.fixture
async def limited() -> AsyncIterator[Callable[..., Awaitable[SignalingServer]]]:
    servers: list[SignalingServer] = []

    async def start(**limits: Any) -> SignalingServer:
        server = await start_signaling_server(port=0, options=SignalingServerOptions(**limits))
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
async def clients() -> AsyncIterator[Open]:
    opened: list[Client] = []

    async def make(url: str, **kwargs: Any) -> Client:
        client = await open_client(url, **kwargs)
        opened.append(client)
        return client

    yield make
    for client in opened:
        await client.socket.close()


# -- each limit ----------------------------------------------------------------------------


@pytest.mark.engine_neutral
async def test_message_rate(limited: Any, clients: Open) -> None:
    # close_timeout: the server waits that long for the flooding client's close acknowledgement
    # (5 s by default); the close frame and its reason are what is checked
    server = await limited(max_messages_per_second=5, message_burst=10, close_timeout=0.5)
    a = await clients(server.url)
    assert await a.join() == [a.id]  # within the burst
    with contextlib.suppress(ConnectionClosed):
        for _ in range(30):  # far past the burst, faster than 5 per second
            await a.send({"type": "ping"})
    reason = await a.expect_closed(CloseReason.RATE_LIMITED)
    assert "5 messages/s" in reason
    assert server.closes == {"SIGNALING_RATE_LIMITED": 1}


@pytest.mark.engine_neutral
async def test_message_size(limited: Any, clients: Open) -> None:
    server = await limited(max_message_bytes=4096)
    a = await clients(server.url)
    await a.send({"type": "ping", "pad": "x" * 5000})
    await a.expect_closed(1009)


@pytest.mark.engine_neutral
async def test_rooms_per_connection(limited: Any, clients: Open) -> None:
    server = await limited(max_rooms_per_connection=2)
    a = await clients(server.url)
    await a.join("room-one")
    await a.join("room-two")
    await a.send({"type": "join", "room": "room-three"})
    reason = await a.expect_closed(CloseReason.TOO_MANY_ROOMS)
    assert "limit 2" in reason
    assert server.rooms() == {}


@pytest.mark.engine_neutral
async def test_peers_per_room(limited: Any, clients: Open) -> None:
    server = await limited(max_peers_per_room=2)
    a, b, c = [await clients(server.url) for _ in range(3)]
    await a.join()
    assert await b.join() == [a.id, b.id]
    await c.join("another-room")  # other rooms are not affected
    await c.send({"type": "join", "room": ROOM})
    await c.expect_closed(CloseReason.ROOM_FULL)
    assert server.rooms() == {ROOM: [a.id, b.id]}


@pytest.mark.engine_neutral
async def test_total_connections(limited: Any, clients: Open) -> None:
    server = await limited(max_connections=2)
    a = await clients(server.url)
    await clients(server.url)
    with pytest.raises(InvalidStatus) as info:
        await open_client(server.url)
    assert info.value.response.status_code == 503
    assert info.value.response.body.strip() == b"SIGNALING_SERVER_FULL"
    await a.socket.close()
    async with asyncio.timeout(WAIT):  # a slot frees as soon as the server saw the leave
        while True:
            try:
                await clients(server.url)
                break
            except InvalidStatus:
                await asyncio.sleep(0.01)
    assert server.closes["SIGNALING_SERVER_FULL"] >= 1


@pytest.mark.engine_neutral
async def test_idle_timeout(limited: Any, clients: Open) -> None:
    server = await limited(ping_timeout=0.3)
    a = await clients(server.url)
    await a.join()
    reason = await a.expect_closed(CloseReason.IDLE)
    assert "0.3 s" in reason
    assert server.rooms() == {}


async def flood(
    sender: Client,
    receiver_id: str,
    blob: str,
    frames: int,
    seconds: float,
    until: Callable[[], bool] = lambda: False,
) -> int:
    """Send up to ``frames`` signals of ``blob`` to ``receiver_id`` within ``seconds``; every
    20 frames, wait until the server has handled them (a ``join`` is answered in order), so
    the kernel's socket buffers cannot hide a server that lags; stop early once ``until()``.
    Returns the frames sent."""
    deadline = time.monotonic() + seconds
    sent = 0
    with contextlib.suppress(ConnectionClosed):
        while sent < frames and time.monotonic() < deadline and not until():
            await sender.send(sender.signal(receiver_id, blob))
            sent += 1
            if sent % 20 == 0:
                await sender.send({"type": "join", "room": f"sync-room-{sent}"})
                while (await sender.recv())["otherPeerIds"] != [sender.id]:
                    pass
    return sent


@pytest.mark.engine_neutral
async def test_a_receiver_that_never_reads_is_closed_and_its_queue_stays_bounded(
    limited: Any, clients: Open
) -> None:
    server = await limited(
        max_send_buffer_bytes=64 * 1024,
        max_messages_per_second=10_000,
        message_burst=10_000,
        max_rooms_per_connection=1000,
    )
    sender = await clients(server.url)
    await sender.join()
    stalled = await StalledMember.join(server.url, ROOM)
    try:
        assert await sender.recv() == {"type": "joined", "otherPeerIds": [sender.id, stalled.id]}
        sent = await flood(
            sender, stalled.id, "x" * 16_000, frames=2000, seconds=30, until=lambda: server.closes
        )
        # The kernel's socket buffers take a few MB before the server's queue grows at all.
        assert server.closes == {"SIGNALING_SLOW_RECEIVER": 1}, f"not closed after {sent} frames"
        assert sent < 2000  # 32 MB offered at most: a few MB of kernel buffers, then 64 KiB
        assert server.rooms()[ROOM] == [sender.id]
        async with asyncio.timeout(WAIT):  # reading now: what was queued, then the close
            code, reason, _frames = await stalled.drain()
        assert code == 1008 and reason.startswith("SIGNALING_SLOW_RECEIVER: ")
        await sender.send({"type": "ping"})  # the sender is fine; frames to it are dropped
        await sender.join("after-the-flood")
    finally:
        stalled.close()


@pytest.mark.engine_neutral
def test_every_limit_must_be_positive() -> None:
    for name in ("max_connections", "max_peers_per_room", "ping_timeout", "message_burst"):
        with pytest.raises(ValidationError) as info:
            SignalingServerOptions(**{name: 0})
        assert info.value.code == "WEBRTC_SETTING_INVALID"
        assert info.value.parameters["setting"] == name


@pytest.mark.engine_neutral
async def test_keyword_overrides_and_the_old_call_forms_still_work() -> None:
    options = SignalingServerOptions(max_peers_per_room=3)
    async with await start_signaling_server(
        "127.0.0.1", 0, ping_timeout=30.0, max_message_bytes=1000, options=options
    ) as server:
        assert server.options == SignalingServerOptions(
            ping_timeout=30.0, max_message_bytes=1000, max_peers_per_room=3
        )
        assert server.url.startswith("ws://127.0.0.1:")


# -- TLS -----------------------------------------------------------------------------------


async def test_tls_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key, pem = self_signed(tmp_path)
    server_ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ssl.load_cert_chain(cert, key)
    client_ssl = ssl.create_default_context(cadata=pem)
    async with await start_signaling_server(port=0, ssl=server_ssl) as server:
        assert server.url == f"wss://127.0.0.1:{server.port}"
        factory = aiortc_connection_handler(
            server.url, ice_servers=[], host_addresses=["127.0.0.1"], ssl=client_ssl
        )
        handlers: list[ConnectionHandler] = []
        try:
            for _ in range(2):
                handlers.append(await factory("tls-topic-1"))
            connected = asyncio.Event()
            handlers[0].connects.subscribe(lambda _peer: connected.set())
            async with asyncio.timeout(WAIT):
                await connected.wait()  # signaling over wss:// introduced the pair
            # A client that does not trust the certificate never joins.
            untrusting = aiortc_connection_handler(
                server.url, ice_servers=[], host_addresses=["127.0.0.1"], connect_timeout=1.0
            )
            with pytest.raises(ReplicationError) as info:
                await untrusting("tls-topic-1")
            assert info.value.code == "WEBRTC_SIGNALING_UNREACHABLE"
            assert len(server.rooms()["tls-topic-1"]) == 2
        finally:
            for handler in handlers:
                await handler.close()


# -- the authentication hook -----------------------------------------------------------------


def bearer_or_query(request: Any) -> bool:
    return bool(
        request.headers.get("Authorization") == "Bearer good-token"
        or request.path.endswith("?token=good-token")
    )


async def async_hook(request: Any) -> bool:
    await asyncio.sleep(0)
    return bearer_or_query(request)


def raising_hook(request: Any) -> bool:
    raise RuntimeError("the hook is broken")


@pytest.mark.parametrize("hook", [bearer_or_query, async_hook])
async def test_the_authenticate_hook_refuses_a_bad_token(hook: Any, clients: Open) -> None:
    async with await start_signaling_server(port=0, authenticate=hook) as server:
        for kwargs in ({}, {"additional_headers": {"Authorization": "Bearer bad"}}):
            with pytest.raises(InvalidStatus) as info:
                await open_client(server.url, **kwargs)
            assert info.value.response.status_code == 401
            assert info.value.response.body.strip() == b"SIGNALING_UNAUTHORIZED"
        with pytest.raises(InvalidStatus):
            await open_client(server.url + "/?token=bad")
        good = await clients(server.url, additional_headers={"Authorization": "Bearer good-token"})
        assert await good.join() == [good.id]
        in_query = await clients(server.url + "/?token=good-token")  # what RxDB clients can do
        assert await in_query.join() == [good.id, in_query.id]
        assert server.closes == {"SIGNALING_UNAUTHORIZED": 3}
        # Through the connection handler: headers= sends the token.
        good_factory = aiortc_connection_handler(
            server.url, ice_servers=[], headers={"Authorization": "Bearer good-token"}
        )
        handler = await good_factory(ROOM)
        await handler.close()
        bad_factory = aiortc_connection_handler(server.url, ice_servers=[], connect_timeout=0.5)
        with pytest.raises(ReplicationError):
            await bad_factory(ROOM)


@pytest.mark.engine_neutral
async def test_a_raising_hook_refuses(clients: Open) -> None:
    async with await start_signaling_server(port=0, authenticate=raising_hook) as server:
        with pytest.raises(InvalidStatus) as info:
            await open_client(server.url)
        assert info.value.response.status_code == 401


# -- floods against a server in a child process -------------------------------------------


@pytest.mark.engine_neutral
async def test_flood_to_a_member_that_never_reads_keeps_the_server_small() -> None:
    # Only the rate limit is raised, so that the send-buffer bound alone is what holds.
    raised = {"max_messages_per_second": 100_000, "message_burst": 100_000}
    async with ChildServer({**raised, "max_rooms_per_connection": 1000}) as child:
        baseline = child.rss_kib()
        sender = await open_client(child.url)
        await sender.join()
        stalled = await StalledMember.join(child.url, ROOM)
        try:
            await sender.recv()
            started = time.monotonic()
            sent = await flood(sender, stalled.id, "y" * 60_000, frames=1500, seconds=30)
            offered = sent * 60_000
            peak = max(baseline, child.rss_kib())
            closes = await child.closes()
        finally:
            await sender.socket.close()
            stalled.close()
        growth_mib = (peak - baseline) / 1024
        print(
            f"\nflood: {offered / 1e6:.0f} MB offered in {time.monotonic() - started:.1f} s to a"
            f" member that never reads; server VmRSS {baseline / 1024:.1f} MiB ->"
            f" peak {peak / 1024:.1f} MiB (+{growth_mib:.1f} MiB); closes {closes}"
        )
        assert closes.get("SIGNALING_SLOW_RECEIVER") == 1
        assert offered > 30_000_000
        assert growth_mib < 40, f"the server grew by {growth_mib:.1f} MiB"


async def test_connection_and_join_flood_while_a_secret_pair_keeps_connecting() -> None:
    async with ChildServer({}) as child:
        baseline = child.rss_kib()
        stop = asyncio.Event()
        opened = 0

        async def churn(worker: int) -> None:
            nonlocal opened
            while not stop.is_set():
                try:
                    client = await open_client(child.url)
                except (OSError, InvalidStatus, TimeoutError):
                    continue
                opened += 1
                for n in range(8):
                    await client.send({"type": "join", "room": f"flood-{worker}-{n}-{opened}"})
                await client.send({"type": "join", "room": "flood-shared-room"})
                await client.socket.close()

        workers = [asyncio.create_task(churn(w)) for w in range(40)]
        peak = baseline
        pairs = 0
        try:
            for round_ in range(4):  # a fresh pair each round: signaling is needed every time
                factory = aiortc_connection_handler(
                    child.url, ice_servers=[], host_addresses=["127.0.0.1"], secret=PAIR_SECRET
                )
                a, b = await factory("legit-topic"), await factory("legit-topic")
                try:
                    got: asyncio.Queue[Any] = asyncio.Queue()
                    b.messages.subscribe(got.put_nowait)
                    connected: asyncio.Queue[Any] = asyncio.Queue()
                    a.connects.subscribe(connected.put_nowait)
                    async with asyncio.timeout(20):
                        await connected.get()
                        await a.send(a.peers[0], {"round": round_})
                        assert (await got.get()).data == {"round": round_}
                    pairs += 1
                finally:
                    await a.close()
                    await b.close()
                peak = max(peak, child.rss_kib())
        finally:
            stop.set()
            await asyncio.wait(workers)
        peak = max(peak, child.rss_kib())
        growth_mib = (peak - baseline) / 1024
        print(
            f"\njoin flood: {opened} connections x 9 joins by 40 workers; {pairs} secret pairs"
            f" connected meanwhile; server VmRSS {baseline / 1024:.1f} MiB -> peak"
            f" {peak / 1024:.1f} MiB (+{growth_mib:.1f} MiB)"
        )
        assert pairs == 4 and opened >= 200
        assert growth_mib < 60, f"the server grew by {growth_mib:.1f} MiB"


@pytest.mark.engine_neutral
async def test_a_server_built_by_hand_listens_only_once_started() -> None:
    server = SignalingServer(port=0, options=SignalingServerOptions(max_peers_per_room=2))
    assert server.connection_count == 0 and server.rooms() == {}
    async with server:  # entering starts it
        assert server.url.startswith("ws://127.0.0.1:")
        assert await server.start() is server  # a second start does nothing
        client = await open_client(server.url)
        assert await client.join() == [client.id]
        await client.socket.close()
