"""``p2pdb signaling`` with TLS, a bearer token and limits, run as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import ssl
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import websockets
from cli_helpers import run
from test_cli_errors import assert_one_line_error
from tls_helpers import self_signed
from websockets.exceptions import InvalidStatus

import p2pdb


@pytest.fixture
def port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free: int = sock.getsockname()[1]
        return free


async def start(*args: str, env: dict[str, str] | None = None) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pdb",
        "signaling",
        *args,
        stdout=asyncio.subprocess.PIPE,
        env={
            **os.environ,
            "PYTHONPATH": str(Path(p2pdb.__file__).parent.parent),
            **(env or {}),
        },
    )
    return process


@pytest.fixture
async def processes() -> AsyncIterator[list[asyncio.subprocess.Process]]:
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0


async def banner(process: asyncio.subprocess.Process) -> str:
    assert process.stdout is not None
    async with asyncio.timeout(20):
        return (await process.stdout.readline()).decode()


async def test_tls_token_and_limits(
    tmp_path: Path, port: int, processes: list[asyncio.subprocess.Process]
) -> None:
    cert, key, pem = self_signed(tmp_path)
    process = await start(
        "--port", str(port), "--tls-cert", str(cert), "--tls-key", str(key),
        "--auth-token-env", "SIGNAL_TOKEN", "--max-peers-per-room", "1",
        env={"SIGNAL_TOKEN": "s3cr3t-token"},
    )  # fmt: skip
    processes.append(process)
    assert f"listening on wss://127.0.0.1:{port}" in await banner(process)
    trust = ssl.create_default_context(cadata=pem)
    url = f"wss://127.0.0.1:{port}"
    with pytest.raises(InvalidStatus) as info:
        await websockets.connect(url, ssl=trust)
    assert info.value.response.status_code == 401
    headers = {"Authorization": "Bearer s3cr3t-token"}
    async with websockets.connect(url, ssl=trust, additional_headers=headers) as first:
        init = json.loads(await first.recv())
        await first.send(json.dumps({"type": "join", "room": "cli-room"}))
        assert json.loads(await first.recv())["otherPeerIds"] == [init["yourPeerId"]]
        async with websockets.connect(url + "/?token=s3cr3t-token", ssl=trust) as second:
            await second.recv()
            await second.send(json.dumps({"type": "join", "room": "cli-room"}))
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await second.recv()
            assert closed.value.rcvd is not None
            assert closed.value.rcvd.reason.startswith("SIGNALING_ROOM_FULL: ")


def test_tls_mistakes_are_one_line(tmp_path: Path) -> None:
    cert, key, _ = self_signed(tmp_path)
    line = assert_one_line_error(run("signaling", "--tls-cert", str(cert)), "CLI_USAGE")
    assert "--tls-key" in line
    missing = str(tmp_path / "missing.pem")
    assert_one_line_error(
        run("signaling", "--tls-cert", missing, "--tls-key", str(key)), "CLI_FILE_NOT_FOUND"
    )
    line = assert_one_line_error(
        run("signaling", "--tls-cert", str(key), "--tls-key", str(cert)), "CLI_TLS_INVALID"
    )
    assert "PEM" in line
    assert_one_line_error(run("signaling", "--auth-token-env", "P2PDB_NO_SUCH_VAR"), "CLI_USAGE")
    assert_one_line_error(run("signaling", "--max-connections", "0"), "CLI_USAGE")
