"""The ``p2pdb`` command line, run as a user runs it: real processes, real sockets."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import pytest
import websockets


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
