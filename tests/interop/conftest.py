"""Fixtures for the RxDB interop tests: real RxDB 17.6 peers in Node (``rxdb_peer.mjs``),
RxDB's own signaling server (``signaling.mjs``) or p2pdb's, and p2pdb peers in this process.

Node >= 20 and ``npm ci`` in tests/interop are required: without them every test here fails
(never skips) with a message saying what to install.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import select
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from rxdb_harness import (
    HERE,
    SCHEMA,
    InteropSetupError,
    P2pdbPeer,
    RoleProxy,
    RxdbPeer,
    WireLog,
    node_executable,
)

from p2pdb.plugins.replication_webrtc import start_signaling_server


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` binary; fails every test that needs it when Node or npm ci is missing."""
    try:
        return node_executable()
    except InteropSetupError as error:
        problem = str(error)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(autouse=True)
def _require_node(node: str) -> None:
    """Every interop test needs Node and the harness's node_modules."""


@pytest.fixture(scope="session")
def rxdb_signaling_url(node: str) -> Iterator[str]:
    """RxDB's ``startSignalingServerSimplePeer`` on 127.0.0.1, shared by the session."""
    process = subprocess.Popen(
        [node, str(HERE / "signaling.mjs"), "0", "127.0.0.1"],
        cwd=HERE,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30.0)
        line = process.stdout.readline() if ready else b""
        if not line:
            pytest.fail("node signaling.mjs did not print its ready line within 30 s")
        yield str(orjson.loads(line)["url"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)  # this child only, by its PID
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


class Stack:
    """Everything one test starts; :meth:`close` stops it all (p2pdb first, then Node)."""

    def __init__(self, tmp_path: Path, rxdb_signaling: Any) -> None:
        self.tmp_path = tmp_path
        self._rxdb_signaling = rxdb_signaling
        self.p2pdb_peers: list[P2pdbPeer] = []
        self.rxdb_peers: list[RxdbPeer] = []
        self.proxies: list[RoleProxy] = []
        self._servers: list[Any] = []

    @staticmethod
    def topic() -> str:
        return f"p2pdb-interop-{secrets.token_hex(6)}"

    async def signaling(self, kind: str) -> str:
        """The URL of a signaling server: ``"p2pdb"`` (a new one) or ``"rxdb"`` (shared)."""
        if kind == "rxdb":
            return str(self._rxdb_signaling())
        server = await start_signaling_server(host="127.0.0.1", port=0)
        self._servers.append(server)
        return server.url

    async def rxdb(
        self,
        name: str,
        signaling_url: str,
        topic: str,
        schema: dict[str, Any] | None = None,
        *,
        middle_id: bool = False,
        **config: Any,
    ) -> RxdbPeer:
        """Start an RxDB peer; ``middle_id``: through a proxy that gives it a signaling id
        in ``[h, t)``, so a p2pdb peer can then be given an id on either side of it."""
        if middle_id:
            proxy = await RoleProxy.middle(signaling_url)
            self.proxies.append(proxy)
            signaling_url = proxy.url
        peer = await RxdbPeer.start(name, signaling_url, topic, schema or SCHEMA, **config)
        self.rxdb_peers.append(peer)
        return peer

    async def p2pdb(self, name: str, schema: dict[str, Any] | None = None, **kw: Any) -> P2pdbPeer:
        peer = await P2pdbPeer.open(self.tmp_path, name, schema or SCHEMA, **kw)
        self.p2pdb_peers.append(peer)
        return peer

    async def initiator_proxy(
        self, signaling_url: str, initiator: bool, signal_delay: float = 0.0
    ) -> str:
        """A signaling URL that makes its client the WebRTC initiator (or the responder)
        towards every RxDB peer started with ``middle_id=True``."""
        proxy = await RoleProxy.initiator(signaling_url, initiator, signal_delay)
        self.proxies.append(proxy)
        return proxy.url

    async def close(self) -> None:
        for p2pdb_peer in self.p2pdb_peers:
            await p2pdb_peer.close()
        for rxdb_peer in self.rxdb_peers:
            await rxdb_peer.quit()
        for proxy in self.proxies:
            await proxy.close()
        for server in self._servers:
            await server.close()


@pytest.fixture
async def stack(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    # The shared RxDB signaling server starts only for tests that ask for it.
    s = Stack(tmp_path, lambda: request.getfixturevalue("rxdb_signaling_url"))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> WireLog:
    """A log of every replication message the p2pdb peers of this test sent and received."""
    log = WireLog()
    log.install(monkeypatch.setattr)
    return log
