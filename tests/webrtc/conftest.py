"""Fixtures for the WebRTC transport tests: a real signaling server on 127.0.0.1 and
real aiortc handlers on loopback (no internet: ICE server lists are always explicit)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from webrtc_helpers import TOPIC, Events, HandlerMaker

from p2pdb.plugins.replication_webrtc import (
    ConnectionHandler,
    aiortc_connection_handler,
    start_signaling_server,
)
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer


@pytest.fixture
async def signaling() -> AsyncIterator[SignalingServer]:
    server = await start_signaling_server(port=0)
    async with server:
        yield server


@pytest.fixture
async def make_handler(signaling: SignalingServer) -> AsyncIterator[HandlerMaker]:
    """``await make_handler(topic, **factory_kwargs)`` -> (handler, events); closed at the end."""
    handlers: list[ConnectionHandler] = []

    async def make(topic: str = TOPIC, **kwargs: Any) -> tuple[ConnectionHandler, Events]:
        kwargs.setdefault("ice_servers", [])
        kwargs.setdefault("host_addresses", ["127.0.0.1"])
        handler = await aiortc_connection_handler(signaling.url, **kwargs)(topic)
        handlers.append(handler)
        return handler, Events(handler)

    yield make
    for handler in handlers:
        await handler.close()
