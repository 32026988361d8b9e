"""The ``p2pdb`` command line, run as a user runs it: real processes, real sockets."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path

import pytest
import websockets
from schemas import PEER_SCHEMA


async def test_demo_converges_and_exits_zero() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pdb.cli",
        "demo",
        "--bound",
        "60",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(110):
        output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, text
    assert "converged: all three peers hold the same todos." in text
    assert "conflict on 'peer-c-0' resolved" in text
    digests = {line.split("digest ")[1] for line in text.splitlines() if "digest " in line}
    assert len(digests) == 1, text


async def test_signaling_command_serves_the_protocol(unused_tcp_port: int) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pdb.cli",
        "signaling",
        "--port",
        str(unused_tcp_port),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            banner = await process.stdout.readline()
            assert b"listening on ws://127.0.0.1" in banner
            async with websockets.connect(f"ws://127.0.0.1:{unused_tcp_port}") as socket:
                init = json.loads(await socket.recv())
                assert init["type"] == "init" and len(init["yourPeerId"]) == 12
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_peer_command_keeps_a_file_in_sync(tmp_path: Path) -> None:
    """`p2pdb peer` replicates with a pool in this process; the test reads its SQLite file."""
    import p2pdb
    from p2pdb.plugins.replication_webrtc import (
        aiortc_connection_handler,
        replicate_webrtc,
        start_signaling_server,
    )

    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(PEER_SCHEMA))
    backup_path = str(tmp_path / "backup.db")
    async with await start_signaling_server(port=0) as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "p2pdb.cli",
            "peer",
            "--db",
            backup_path,
            "--collection",
            "docs",
            "--schema",
            str(schema_file),
            "--topic",
            "backup-room",
            "--signaling",
            server.url,
            "--host-address",
            "127.0.0.1",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            async with p2pdb.create_database(str(tmp_path / "app.db")) as db:
                docs = await db.add_collection("docs", schema=PEER_SCHEMA)
                await docs.insert({"id": "a", "text": "backed up"})
                handler = aiortc_connection_handler(
                    server.url, ice_servers=[], host_addresses=["127.0.0.1"]
                )
                async with await replicate_webrtc(docs, "backup-room", handler) as pool:
                    await pool.wait_for_first_peer()
                    async with p2pdb.create_database(backup_path) as backup_db:
                        backup = await backup_db.add_collection("docs", schema=PEER_SCHEMA)
                        arrived = backup.find_one("a").watch()
                        async with asyncio.timeout(20):
                            async for doc in arrived:  # another process's writes, via the tailer
                                if doc is not None:
                                    assert doc["text"] == "backed up"
                                    break
        finally:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                output, _ = await process.communicate()
        assert process.returncode == 0
        assert b"p2pdb peer:" in output and b"docs 1  received 1" in output
