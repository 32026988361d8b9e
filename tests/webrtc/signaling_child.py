"""A signaling server in its own OS process, so that its memory can be measured.

Run as a script (the child)::

    python signaling_child.py '{"max_messages_per_second": 10000}'

It starts ``start_signaling_server(port=0, options=SignalingServerOptions(**json))``, prints
its URL on one line, prints ``{"closes": ...}`` for each line read on stdin and exits when
stdin closes. Imported (the parent), :class:`ChildServer` starts it and reads its VmRSS.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from types import TracebackType
from typing import Any


def vm_rss_kib(pid: int) -> int:
    """The resident set size of process ``pid`` in KiB (``/proc/<pid>/status``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


class ChildServer:
    """The parent side: ``async with ChildServer(options) as child: child.url, child.rss()``."""

    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        self.url = ""
        self._process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def rss_kib(self) -> int:
        return vm_rss_kib(self.pid)

    async def closes(self) -> dict[str, int]:
        """The server's ``closes`` counters (asked over stdin)."""
        assert self._process is not None and self._process.stdin and self._process.stdout
        self._process.stdin.write(b"closes\n")
        await self._process.stdin.drain()
        async with asyncio.timeout(10):
            counts: dict[str, int] = json.loads(await self._process.stdout.readline())["closes"]
        return counts

    async def __aenter__(self) -> ChildServer:
        self._process = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            json.dumps(self.options),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self._process.stdout is not None
        async with asyncio.timeout(30):
            self.url = (await self._process.stdout.readline()).decode().strip()
        assert self.url.startswith("ws://"), f"the child printed {self.url!r}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.close()
        try:
            async with asyncio.timeout(15):
                await self._process.wait()
        except TimeoutError:
            self._process.kill()
            await self._process.wait()


async def _child(options: dict[str, Any]) -> None:
    from p2pdb.plugins.replication_webrtc import start_signaling_server
    from p2pdb.plugins.replication_webrtc.signaling_limits import SignalingServerOptions

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    server = await start_signaling_server(port=0, options=SignalingServerOptions(**options))
    async with server:
        print(server.url, flush=True)
        while await reader.readline():
            print(json.dumps({"closes": server.closes}), flush=True)


if __name__ == "__main__":
    asyncio.run(_child(json.loads(sys.argv[1])))
