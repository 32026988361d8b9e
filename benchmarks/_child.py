"""A benchmark's child process, driven by JSON lines: the parent writes commands to its
stdin and reads events from its stdout, one JSON object a line.

The raw-channel baselines and the transport benchmarks each run two such children (one per
WebRTC end) so that both ends have a process, an event loop and a GIL of their own, as two
peers on two machines would.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Mapping
from typing import Any, Self

import orjson

__all__ = ["JsonChild", "emit"]


def emit(**fields: Any) -> None:
    """In the child: write one event line to the parent."""
    sys.stdout.buffer.write(orjson.dumps(fields) + b"\n")
    sys.stdout.buffer.flush()


class JsonChild:
    """The parent's handle on one child process."""

    def __init__(self, process: asyncio.subprocess.Process, within: float) -> None:
        self.process = process
        self.within = within

    @classmethod
    async def start(
        cls, *args: str, env: Mapping[str, str] | None = None, within: float = 120
    ) -> Self:
        """Start ``python *args``; ``within`` is the default wait for one event line."""
        process = await asyncio.create_subprocess_exec(
            sys.executable, *args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env=None if env is None else dict(env), limit=2**24,
        )  # fmt: skip
        return cls(process, within)

    def send(self, **fields: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(fields) + b"\n")

    async def read(self, within: float | None = None, event: str | None = None) -> dict[str, Any]:
        """The next event line; with ``event``, it must be that event."""
        assert self.process.stdout is not None
        async with asyncio.timeout(self.within if within is None else within):
            line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"child process {self.process.pid} exited")
        result: dict[str, Any] = orjson.loads(line)
        assert event is None or result.get("event") == event, result
        return result

    async def quit(self, within: float = 10) -> None:
        """Ask the child to quit; kill it if it has not within ``within`` seconds."""
        try:
            self.send(cmd="quit")
            async with asyncio.timeout(within):
                await self.process.wait()
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            self.process.kill()
            await self.process.wait()
