"""The README's WebRTC defaults on a host whose only interface is loopback.

aioice leaves 127.0.0.1 out of its host candidates, so before the fix two peers on a machine
with only ``lo`` (a container, a network namespace, a laptop offline) had no candidate at all
and logged ``WEBRTC_CONNECT_TIMEOUT`` forever. Now such a host offers 127.0.0.1.

Two checks: one in a real network namespace with only ``lo`` up (``unshare``: as root, or as a
user where unprivileged user namespaces are allowed), and one in this process with the list
of network adapters reduced to loopback.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import ifaddr
import pytest
from schemas import PEER_SCHEMA

import p2pdb
from p2pdb.plugins.replication_webrtc import (
    aiortc_connection_handler,
    replicate_webrtc,
    start_signaling_server,
)

#: Two peers with the README's settings (only ``ice_servers=[]``), in one process: B must
#: receive A's document. Prints "converged" and exits 0, or fails within 40 s.
PEERS_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import p2pdb
    from p2pdb.plugins.replication_webrtc import (
        aiortc_connection_handler, replicate_webrtc, start_signaling_server,
    )
    SCHEMA = {
        "version": 0, "primaryKey": "id", "type": "object",
        "properties": {"id": {"type": "string", "maxLength": 64}, "text": {"type": "string"}},
        "required": ["id", "text"],
    }

    async def main(folder: str) -> None:
        server = await start_signaling_server(port=0)
        async with server:
            url = server.url
            a = await p2pdb.create_database(f"{folder}/a.db")
            b = await p2pdb.create_database(f"{folder}/b.db")
            todos_a = await a.add_collection("todos", schema=SCHEMA)
            todos_b = await b.add_collection("todos", schema=SCHEMA)
            await todos_a.insert({"id": "milk", "text": "buy milk"})
            pools = [
                await replicate_webrtc(c, "loopback-only", aiortc_connection_handler(
                    url, ice_servers=[]))
                for c in (todos_a, todos_b)
            ]
            async for ids in todos_b.find().watch():
                if ids:
                    break
            print("converged", flush=True)
            for pool in pools:
                await pool.cancel()
            await a.close()
            await b.close()

    asyncio.run(asyncio.wait_for(main(sys.argv[1]), 40))
    """
)


def test_two_peers_connect_in_a_namespace_with_only_loopback(tmp_path: Path) -> None:
    unshare, ip = shutil.which("unshare"), shutil.which("ip") or "/sbin/ip"
    assert unshare is not None, "this test needs util-linux's `unshare`"
    script = tmp_path / "peers.py"
    script.write_text(PEERS_SCRIPT)
    root = ["-n"] if os.geteuid() == 0 else ["-r", "-n"]  # a user namespace when not root
    command = f"{ip} link set lo up && exec {sys.executable} {script} {tmp_path}"
    result = subprocess.run(
        [unshare, *root, "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and "converged" in result.stdout, (
        f"exit {result.returncode}\nstdout: {result.stdout[-2000:]}\n"
        f"stderr: {result.stderr[-4000:]}"
    )


@pytest.fixture
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this process see only the loopback adapter, as on a host with only ``lo``."""
    adapters = [a for a in ifaddr.get_adapters() if a.nice_name == "lo"]
    assert adapters, "the loopback adapter `lo` was not found"
    monkeypatch.setattr(ifaddr, "get_adapters", lambda *args, **kwargs: adapters)


@pytest.fixture
async def signaling_url() -> AsyncIterator[str]:
    server = await start_signaling_server(port=0)
    async with server:
        yield server.url


async def test_default_settings_offer_loopback_when_nothing_else_exists(
    loopback_only: None, signaling_url: str, tmp_path: Path
) -> None:
    databases = [await p2pdb.create_database(str(tmp_path / f"{n}.db")) for n in "ab"]
    try:
        a, b = [await db.add_collection("todos", schema=PEER_SCHEMA) for db in databases]
        await a.insert({"id": "milk", "text": "buy milk"})
        pools = [
            await replicate_webrtc(c, "loopback-only", aiortc_connection_handler(signaling_url))
            for c in (a, b)
        ]
        try:
            async with asyncio.timeout(30):
                async for ids in b.find().watch():
                    if ids:
                        break
            assert [doc.id for doc in await b.find()] == ["milk"]
        finally:
            for pool in pools:
                await pool.cancel()
    finally:
        for db in databases:
            await db.close()
