"""A real ``redis-server`` on a free port of 127.0.0.1 for tests (a plain module), with no
persistence, stopped (or killed, and started again on the same port) by its PID.

If ``redis-server`` is not installed, the session installs Debian's ``redis-server`` itself
when it runs as root on a machine with ``apt-get`` (tests/conftest.py calls
:func:`system_packages.find_or_install_redis` once, before any test's timeout starts);
otherwise every test that needs it fails (never skips) with one line saying how to install it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from system_packages import find_or_install_redis


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def redis_binary() -> str:
    """The ``redis-server`` to run; fails the test with how to install it when there is none."""
    binary, problem = find_or_install_redis()
    if binary is None:
        pytest.fail(problem.splitlines()[0], pytrace=False)
    return binary


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as probe:
            probe.sendall(b"PING\r\n")
            return probe.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process; :meth:`kill` and :meth:`start` keep the port."""

    def __init__(self, folder: Path) -> None:
        self.binary = redis_binary()
        self.folder = folder
        self.port = free_tcp_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it and wait (up to 10 s) until it answers PING."""
        log = self.folder / f"redis-{self.port}.log"
        command = [self.binary, "--save", "", "--appendonly", "no", "--port", str(self.port)]
        command += ["--bind", "127.0.0.1", "--dir", str(self.folder), "--logfile", str(log)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not answers_ping(self.port):
            if self.process.poll() is not None:
                tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
                pytest.fail(f"redis-server exited with {self.process.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                pytest.fail("redis-server did not answer PING within 10 s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL, by PID: every key and connection is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def running_redis(folder: Path) -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, stopped at the end."""
    server = RedisServer(folder)
    try:
        server.start()
        yield server
    finally:
        server.stop()


class SignalingNode:
    """``python -m p2pdb signaling --redis URL --port 0`` in a child process: ``url`` is read
    from its banner; :meth:`kill` sends SIGKILL by PID."""

    def __init__(self, redis_url: str, heartbeat: float = 0.3) -> None:
        self.redis_url = redis_url
        self.heartbeat = heartbeat
        self.url = ""
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> SignalingNode:
        command = ["-m", "p2pdb", "signaling", "--port", "0", "--redis", self.redis_url]
        command += ["--redis-heartbeat", str(self.heartbeat)]
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            *command,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        async with asyncio.timeout(30):
            banner = (await self.process.stdout.readline()).decode()
        found = re.search(r"listening on (ws://\S+?),? ", banner)
        if found is None:
            error = (await self.process.stderr.read()).decode()[-1500:]
            pytest.fail(f"the signaling node printed {banner!r}:\n{error}")
        self.url = found.group(1)
        return self

    def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def stop(self) -> None:
        if self.process is None:
            return
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                self.process.kill()
        await self.process.wait()


async def wait_until(check: Callable[[], bool | Awaitable[bool]], within: float = 10.0) -> None:
    """Poll ``check`` (sync or async) every 20 ms until it is true; fail after ``within`` s."""
    async with asyncio.timeout(within):
        while True:
            verdict = check()
            if verdict if isinstance(verdict, bool) else await verdict:
                return
            await asyncio.sleep(0.02)
