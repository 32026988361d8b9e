"""A raw aiortc peer in its own process for tests/webrtc/test_sctp_sack.py.

    python sack_child.py answerer|offerer

Talks JSON lines: prints ``{"sdp"}`` (its offer or answer), reads the other side's, opens
one ordered data channel; then echoes every ``{"cmd": "send", "count", "size"}`` as that many
numbered messages, and reports what it received in order with ``{"cmd": "report", "expect"}``. It
never enables delayed SACKs: it is the unpatched peer (the environment switches them off
too, in case an import did).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import orjson


def emit(**fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(fields) + b"\n")
    sys.stdout.buffer.flush()


async def main(role: str) -> None:
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    opened = asyncio.Event()
    channels: list[Any] = []
    received = {"count": 0, "in_order": True}
    drained = asyncio.Event()
    arrived = asyncio.Event()

    def attach(channel: Any) -> None:
        channels.append(channel)

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            number = int(str(message)[:8])
            if number != received["count"]:
                received["in_order"] = False
            received["count"] += 1
            arrived.set()

        channel.on("open", opened.set)
        channel.on("bufferedamountlow", drained.set)
        if channel.readyState == "open":
            opened.set()

    if role == "offerer":
        attach(pc.createDataChannel("sack-test", ordered=True))
        await pc.setLocalDescription(await pc.createOffer())
        emit(sdp=pc.localDescription.sdp)
        answer = orjson.loads(await reader.readline())
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    else:
        pc.on("datachannel", attach)
        offer = orjson.loads(await reader.readline())
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        emit(sdp=pc.localDescription.sdp)
    await asyncio.wait_for(opened.wait(), 30)
    emit(event="open")
    channel = channels[0]
    channel.bufferedAmountLowThreshold = 128 * 1024
    while line := await reader.readline():
        command = orjson.loads(line)
        if command["cmd"] == "send":
            filler = "y" * max(0, command["size"] - 8)
            for i in range(command["count"]):
                channel.send(f"{i:08d}{filler}")
                if channel.bufferedAmount > 512 * 1024:
                    drained.clear()
                    await drained.wait()
            emit(event="sent")
        elif command["cmd"] == "report":  # once ``expect`` messages arrived
            while received["count"] < command["expect"]:
                arrived.clear()
                await arrived.wait()
            emit(event="report", **received)
        elif command["cmd"] == "quit":
            break
    await pc.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
