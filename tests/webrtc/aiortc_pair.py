"""Two aiortc peer connections in this process with one open data channel between them,
for the tests of the aiortc patches (imported as a plain module)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiortc import RTCConfiguration, RTCDataChannel, RTCPeerConnection


@contextlib.asynccontextmanager
async def pair(label: str) -> AsyncIterator[tuple[RTCDataChannel, RTCDataChannel]]:
    """``(ours, theirs)``, the two ends of an open channel (``ours``: the offerer's); both
    connections are closed on leaving the block."""
    offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
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
            channels = ours, await theirs
        yield channels
    finally:
        await offerer.close()
        await answerer.close()
