"""A small DevTools-protocol client: start Debian's headless Chromium on a page and run
JavaScript in it (``Runtime.evaluate``), over the ``websockets`` package p2pdb already uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import urllib.request
from pathlib import Path
from typing import Any

from system_packages import find_or_install
from websockets.asyncio.client import ClientConnection, connect

from p2pdb.tasks import cancel_and_wait

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

# Headless in a container: no sandbox, GPU, QUIC or background traffic, a fresh profile.
# WebRTC on loopback: Chromium leaves out 127.0.0.1 candidates unless
# --allow-loopback-in-peer-connection, and hides host addresses behind mDNS names
# (xxxx.local) unless WebRtcHideLocalIpsWithMdns is off.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class BrowserError(Exception):
    """Chromium is missing, did not start, or a script failed in the page."""


def chromium_executable() -> str:
    """The Chromium binary, or :class:`BrowserError` saying how to install it."""
    hint = (
        f"Chromium not found at {CHROMIUM}: install it with `apt-get install -y chromium` "
        "(or set CHROMIUM to another Chromium binary; as root with apt-get, the test session "
        "installs Debian's itself)"
    )
    found, problem = shutil.which(CHROMIUM), hint + "."
    if found is None and "CHROMIUM" not in os.environ:
        found, problem = find_or_install("chromium", "chromium", hint)
    if found is None:
        raise BrowserError(problem)
    return found


class Browser:
    """One headless Chromium showing one page; ``async with`` starts and stops it."""

    def __init__(self, url: str, profile: Path) -> None:
        self.url = url
        self.profile = profile
        self.process: asyncio.subprocess.Process | None = None
        self._socket: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._devtools: asyncio.Future[str] | None = None
        self._stderr: asyncio.Task[None] | None = None
        self.log: list[str] = []  # Chromium's stderr, for failure messages

    async def start(self, limit: float = 20.0) -> None:
        """Start Chromium on the page and connect to the page's DevTools socket."""
        self._devtools = asyncio.get_running_loop().create_future()
        self.process = await asyncio.create_subprocess_exec(
            chromium_executable(),
            *FLAGS,
            f"--user-data-dir={self.profile}",
            "about:blank",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,  # its helper processes form a group we can stop
        )
        self._stderr = asyncio.create_task(self._read_stderr())
        try:
            async with asyncio.timeout(limit):
                address = await asyncio.shield(self._devtools)
        except TimeoutError:
            raise BrowserError(f"Chromium did not open its DevTools port in {limit} s") from None
        targets = await asyncio.to_thread(_get_json, f"http://{address}/json/list")
        pages = [t for t in targets if t.get("type") == "page"]
        if not pages:
            raise BrowserError(f"no page target in {targets}")
        self._socket = await connect(pages[0]["webSocketDebuggerUrl"], max_size=None)
        await self.call("Runtime.enable", {})  # console messages, for failure reports
        # Page.navigate answers once the new document is committed, so the next evaluate
        # runs in it (never in about:blank), after its scripts have run
        navigated = await self.call("Page.navigate", {"url": self.url})
        if "errorText" in navigated:
            raise BrowserError(f"cannot load {self.url}: {navigated['errorText']}")
        await self.evaluate(
            "document.readyState !== 'loading' || new Promise((resolve) =>"
            " addEventListener('DOMContentLoaded', () => resolve(true), {once: true}))"
        )

    async def _read_stderr(self) -> None:
        # drained all along: a full pipe would block Chromium
        assert self.process is not None and self.process.stderr is not None
        assert self._devtools is not None
        while line := (await self.process.stderr.readline()).decode(errors="replace"):
            self.log.append(line.rstrip())
            found = re.search(r"DevTools listening on ws://([^/]+)/", line)
            if found and not self._devtools.done():
                self._devtools.set_result(found[1])
        if not self._devtools.done():
            tail = " | ".join(self.log[-5:])
            self._devtools.set_exception(BrowserError(f"Chromium exited: {tail}"))

    async def call(self, method: str, params: dict[str, Any], limit: float = 20.0) -> Any:
        """Send one DevTools command and return its result; events met on the way that are
        console messages of the page go to ``self.log``."""
        assert self._socket is not None
        ident = next(self._ids)
        await self._socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        async with asyncio.timeout(limit):
            while True:
                message = json.loads(await self._socket.recv())
                if message.get("id") == ident:
                    break
                if message.get("method") == "Runtime.consoleAPICalled":
                    args = message["params"]["args"]
                    words = (str(a.get("value", a.get("description", ""))) for a in args)
                    self.log.append("page console: " + " ".join(words))
        if "error" in message:
            raise BrowserError(f"DevTools error on {method}: {message['error']}")
        return message["result"]

    async def evaluate(self, expression: str, limit: float = 20.0) -> Any:
        """Run ``expression`` in the page, await it if it is a promise, return its value."""
        params = {"expression": expression, "awaitPromise": True, "returnByValue": True}
        result = await self.call("Runtime.evaluate", params, limit)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"script failed in the page: {text}")
        return result["result"].get("value")

    async def close(self) -> None:
        """Close the DevTools socket and stop Chromium (by its PID, then its group)."""
        if self._socket is not None:
            await self._socket.close()
        process = self.process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # the session started for it
                await process.wait()
        if self._stderr is not None:
            await cancel_and_wait([self._stderr])

    async def __aenter__(self) -> Browser:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)
