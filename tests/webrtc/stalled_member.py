"""A signaling member that joins a room and then never reads: a raw TCP socket with a small
receive buffer, speaking just enough WebSocket by hand (a websockets client would keep
reading into its own memory). Imported as a plain module by the hardening tests."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any
from urllib.parse import urlparse


def _masked_text(payload: bytes) -> bytes:
    """One client-to-server text frame (clients must mask)."""
    mask = os.urandom(4)
    length = len(payload)
    header = bytes([0x81])
    if length < 126:
        header += bytes([0x80 | length])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", length)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class StalledMember:
    """``await StalledMember.join(url, room)``; then it reads nothing until :meth:`drain`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.id = ""

    @classmethod
    async def join(cls, url: str, room: str) -> StalledMember:
        parts = urlparse(url)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (parts.hostname, parts.port))
        reader, writer = await asyncio.open_connection(sock=sock, limit=16 * 1024)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: {parts.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        await reader.readuntil(b"\r\n\r\n")
        member = cls(reader, writer)
        _, init = await member.frame()
        member.id = json.loads(init)["yourPeerId"]
        writer.write(_masked_text(json.dumps({"type": "join", "room": room}).encode()))
        await writer.drain()
        opcode, joined = await member.frame()
        assert opcode == 1 and json.loads(joined)["type"] == "joined"
        return member

    async def frame(self) -> tuple[int, bytes]:
        """Read one server frame: ``(opcode, payload)``."""
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def drain(self) -> tuple[int, str, int]:
        """Read everything until the close frame: ``(close code, reason, frames before)``."""
        frames = 0
        while True:
            opcode, payload = await self.frame()
            if opcode == 8:
                (code,) = struct.unpack("!H", payload[:2])
                return code, payload[2:].decode(), frames
            frames += 1

    def close(self, *_: Any) -> None:
        self.writer.close()
