"""Two aiortc peer connections in this process with one open data channel between them,
for the tests of the aiortc patches (imported as a plain module)."""

from __future__ import annotations

import asyncio

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection


async def pair(
    label: str,
) -> tuple[RTCPeerConnection, RTCPeerConnection, RTCDataChannel, RTCDataChannel]:
    """``(offerer, answerer, ours, theirs)``: ``ours`` is the offerer's end of the channel."""
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    ours = offerer.createDataChannel(label, ordered=True)
    theirs: asyncio.Future[RTCDataChannel] = asyncio.get_running_loop().create_future()
    answerer.on("datachannel", theirs.set_result)
    opened = asyncio.Event()
    ours.on("open", opened.set)
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(offerer.localDescription)
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(answerer.localDescription)
    async with asyncio.timeout(30):
        await opened.wait()
        return offerer, answerer, ours, await theirs
