"""The transport fixture of the conformance suite: every test runs once per transport.

``await make_pair(**PairOptions fields)`` returns an opened, not yet started :class:`Pair`;
every pair is closed at the end of its test. A new transport is one :class:`Pair` subclass and
one entry in ``conformance_pairs.TRANSPORTS``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conformance_pairs import (
    TRANSPORTS,
    MakePair,
    Pair,
    PairOptions,
    Resources,
    ThreadedSignaling,
)


@pytest.fixture(scope="module")
def signaling_url() -> Iterator[Callable[[], str]]:
    """The module's one signaling server, started on first use (WebRTC setup is the slow
    part of the suite)."""
    server: ThreadedSignaling | None = None
    url = ""

    def get() -> str:
        nonlocal server, url
        if server is None:
            server = ThreadedSignaling()
            url = server.start()
        return url

    yield get
    if server is not None:
        server.close()


@pytest.fixture(params=list(TRANSPORTS))
def transport(request: pytest.FixtureRequest) -> str:
    """The name of the transport under test."""
    return str(request.param)


@pytest.fixture
async def make_pair(
    transport: str, tmp_path: Path, signaling_url: Callable[[], str]
) -> AsyncIterator[MakePair]:
    """``await make_pair(batch_size=10, ...)``: a fresh pair over the transport under test."""
    pairs: list[Pair] = []
    resources = Resources(tmp_path, signaling_url)

    async def make(**options: Any) -> Pair:
        pair = TRANSPORTS[transport](resources, PairOptions(**options))
        pairs.append(pair)
        await pair.open()
        return pair

    yield make
    for pair in pairs:
        await pair.close()
