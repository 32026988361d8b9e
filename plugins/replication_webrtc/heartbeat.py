"""The heartbeat of a peer session: detect a dead peer in seconds (aiortc alone takes about
30 s) by asking for its token, a request RxDB answers too, whenever it has been quiet."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from p2pdb.errors import PeerError
from p2pdb.replication.rpc import RpcChannel

from .options import WebRTCReplicationOptions
from .rpc import WEBRTC_CODES

__all__ = ["keep_alive"]


async def keep_alive(
    channel: RpcChannel,
    options: WebRTCReplicationOptions,
    checked: Callable[[], bool],
    on_silent: Callable[[], Awaitable[None]],
) -> None:
    """Every ``heartbeat_interval`` the peer was quiet (and once ``checked()`` says it was
    admitted), ask for its token; no answer within ``heartbeat_timeout``: ``on_silent()``.
    Returns after that, or when the channel fails otherwise (the session is ending)."""
    interval, timeout = options.heartbeat_interval, options.heartbeat_timeout
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval)
        if loop.time() - channel.last_heard < interval or not checked():
            continue
        try:
            await channel.request("token", [], within=timeout, urgent=True)
        except PeerError as exc:
            if exc.code == WEBRTC_CODES.request_timeout:
                await on_silent()
            return
