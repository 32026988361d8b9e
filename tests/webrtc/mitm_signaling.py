"""A malicious signaling server (a test double): it speaks RxDB's signaling protocol, but
puts itself in the middle of every connection.

For each offer from X to Y it answers X itself (its own aiortc connection, its own DTLS
certificate: the fingerprint in the answer is the server's) and sends Y an offer of its
own as if from X; it then relays every data-channel frame between the two connections.
``strip=True`` also removes the p2pdb handshake from the relayed ``token`` requests and
answers (a downgrade: both sides then look like RxDB peers to each other).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import string
from typing import Any

import orjson
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from p2pdb.plugins.replication_webrtc.ice import host_addresses_override


class MitmPair:
    """The two connections of one intercepted link (``x`` offered to ``y``)."""

    def __init__(self, server: MitmSignaling, x: str, y: str, connection_id: str | None) -> None:
        self.server, self.x, self.y, self.connection_id = server, x, y, connection_id
        self.to_x = RTCPeerConnection()  # we play y for x
        self.to_y = RTCPeerConnection()  # we play x for y
        self.channels: dict[str, RTCDataChannel] = {}
        self.pending: dict[str, list[str | bytes]] = {"x": [], "y": []}

    async def start(self, offer_sdp: str) -> None:
        with host_addresses_override(("127.0.0.1",)):
            self.to_x.on("datachannel", lambda channel: self._attach("x", channel))
            await self.to_x.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
            await self.to_x.setLocalDescription(await self.to_x.createAnswer())
            assert self.to_x.localDescription is not None
            channel = self.to_y.createDataChannel(self.server.label(), ordered=True)
            self._attach("y", channel)
            await self.to_y.setLocalDescription(await self.to_y.createOffer())
            assert self.to_y.localDescription is not None
        answer = {"type": "answer", "sdp": self.to_x.localDescription.sdp}
        await self.server.send_signal(self.y, self.x, answer, self.connection_id)
        offer = {"type": "offer", "sdp": self.to_y.localDescription.sdp}
        await self.server.send_signal(self.x, self.y, offer, self.connection_id)

    async def answered(self, answer_sdp: str) -> None:
        await self.to_y.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))

    def _attach(self, side: str, channel: RTCDataChannel) -> None:
        self.channels[side] = channel
        other = "y" if side == "x" else "x"
        channel.on("message", lambda frame: self._relay(other, frame))
        channel.on("open", lambda: self._flush(side))
        if channel.readyState == "open":
            self._flush(side)

    def _flush(self, side: str) -> None:
        pending, self.pending[side] = self.pending[side], []
        for frame in pending:
            self.channels[side].send(frame)

    def _relay(self, to: str, frame: str | bytes) -> None:
        frame = self.server.tamper(frame)
        self.server.frames.append(frame if isinstance(frame, str) else frame.decode())
        channel = self.channels.get(to)
        if channel is None or channel.readyState != "open":
            self.pending[to].append(frame)
        else:
            channel.send(frame)

    async def close(self) -> None:
        for pc in (self.to_x, self.to_y):
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await pc.close()


class MitmSignaling:
    """Use ``async with MitmSignaling() as server:``; peers connect to ``server.url``."""

    def __init__(self, *, strip: bool = False) -> None:
        self.strip = strip
        self.frames: list[str] = []  # every relayed data-channel frame
        self.pairs: dict[tuple[str, str, str | None], MitmPair] = {}
        self.sockets: dict[str, ServerConnection] = {}
        self.rooms: dict[str, set[str]] = {}
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    async def __aenter__(self) -> MitmSignaling:
        self._server = await serve(self._session, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for pair in self.pairs.values():
            await pair.close()

    @staticmethod
    def label() -> str:
        return "".join(random.choices("0123456789abcdef", k=40))

    def crossed(self, *words: str) -> list[str]:
        """The relayed frames that contain any of ``words``."""
        return [f for f in self.frames if any(w in f for w in words)]

    def tamper(self, frame: str | bytes) -> str | bytes:
        """With ``strip``: the handshake removed from ``token`` requests and answers (text
        frames, and binary ones of plain JSON as p2pdb sends them; compressed ones pass)."""
        if not self.strip:
            return frame
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return frame
        if isinstance(message, dict) and message.get("method") == "token":
            message["params"] = []
        elif isinstance(message, dict) and isinstance(message.get("result"), dict):
            token = message["result"].get("token")
            if message["result"].get("p2pdb") == 1 and isinstance(token, str):
                message["result"] = token
        out = orjson.dumps(message)
        return out if isinstance(frame, bytes) else out.decode()

    async def send_signal(
        self, sender: str, receiver: str, data: dict[str, Any], connection_id: str | None
    ) -> None:
        frame: dict[str, Any] = {
            "type": "signal",
            "senderPeerId": sender,
            "receiverPeerId": receiver,
            "data": data,
        }
        if connection_id is not None:
            frame["connectionId"] = connection_id
        socket = self.sockets.get(receiver)
        if socket is not None:
            with contextlib.suppress(ConnectionClosed):
                await socket.send(orjson.dumps(frame).decode())

    async def _session(self, socket: ServerConnection) -> None:
        own = "".join(random.choices(string.ascii_lowercase, k=12))
        self.sockets[own] = socket
        await socket.send(orjson.dumps({"type": "init", "yourPeerId": own}).decode())
        try:
            async for raw in socket:
                message = orjson.loads(raw)
                if message.get("type") == "join":
                    room = self.rooms.setdefault(message["room"], set())
                    room.add(own)
                    await self._announce(room)
                elif message.get("type") == "signal":
                    await self._on_signal(own, message)
        except ConnectionClosed:
            pass
        finally:
            del self.sockets[own]
            for room in self.rooms.values():
                if own in room:
                    room.discard(own)
                    await self._announce(room)

    async def _announce(self, room: set[str]) -> None:
        for member in list(room):
            socket = self.sockets.get(member)
            frame = {"type": "joined", "otherPeerIds": sorted(room)}  # RxDB lists all
            if socket is not None:
                with contextlib.suppress(ConnectionClosed):
                    await socket.send(orjson.dumps(frame).decode())

    async def _on_signal(self, sender: str, message: dict[str, Any]) -> None:
        receiver, data = message.get("receiverPeerId"), message.get("data") or {}
        connection_id = message.get("connectionId")
        if not isinstance(receiver, str):
            return
        if data.get("type") == "offer":
            pair = MitmPair(self, sender, receiver, connection_id)
            self.pairs[(sender, receiver, connection_id)] = pair
            await pair.start(data["sdp"])
        elif data.get("type") == "answer":
            pair = self.pairs.get((receiver, sender, connection_id))
            if pair is not None:
                await pair.answered(data["sdp"])
        # candidates: every aiortc SDP carries its candidates already
