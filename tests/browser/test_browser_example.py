"""examples/browser end to end: serve.py (page, signaling server, p2pdb peer) and the RxDB
page in headless Chromium, driven over the DevTools protocol; edits travel both ways.

Needs Chromium (``apt-get install -y chromium``) and the built page (serve.py runs
``npm ci && npm run build`` in examples/browser when dist/ is missing). Without Chromium the
test fails with a message saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import p2pdb
from p2pdb.tasks import cancel_and_wait

sys.path.insert(0, str(Path(__file__).parent))
from chromium_devtools import Browser, BrowserError, chromium_executable  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
SERVE = ROOT / "examples" / "browser" / "serve.py"


def todo_schema() -> dict[str, Any]:
    """The schema serve.py uses: examples/todo_app.py's."""
    spec = importlib.util.spec_from_file_location("todo_app", ROOT / "examples" / "todo_app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    schema: dict[str, Any] = module.TODO_SCHEMA
    return schema


class Server:
    """serve.py in its own process, its console on stdin, its output collected."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.output: list[str] = []
        self._drain: asyncio.Task[None] | None = None

    async def line_matching(self, pattern: str, limit: float) -> re.Match[str]:
        """Read output lines until one matches ``pattern``."""
        assert self.process.stdout is not None
        async with asyncio.timeout(limit):
            while line := (await self.process.stdout.readline()).decode():
                self.output.append(line.rstrip())
                if found := re.search(pattern, line):
                    return found
        raise AssertionError("serve.py exited:\n" + "\n".join(self.output[-20:]))

    def keep_reading(self) -> None:
        """Collect the rest of the output in the background (stopped by :meth:`stop`)."""
        self._drain = asyncio.create_task(self._read_all())

    async def _read_all(self) -> None:
        assert self.process.stdout is not None
        while line := (await self.process.stdout.readline()).decode():
            self.output.append(line.rstrip())

    async def command(self, line: str) -> None:
        """Type one console command."""
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def stop(self) -> None:
        """`quit` on the console; SIGTERM, then SIGKILL, by PID if it does not exit."""
        if self.process.returncode is None:
            with contextlib.suppress(ConnectionError):
                await self.command("quit")
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    async with asyncio.timeout(10):
                        await self.process.wait()
                    break
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.process.pid, sig)
            await self.process.wait()
        if self._drain is not None:
            await cancel_and_wait([self._drain])


@contextlib.asynccontextmanager
async def running_serve_py(folder: Path) -> AsyncIterator[Server]:
    """serve.py on a database in ``folder``, any free port, the peer on 127.0.0.1 only."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SERVE),
        "--db",
        str(folder / "todos.db"),
        "--port",
        "0",
        "--topic",
        "browser-example-test",
        "--loopback",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    started = Server(process)
    try:
        yield started
    finally:
        await started.stop()


def wait_in_page(condition: str, timeout_ms: int = 15000) -> str:
    """JavaScript: a promise that resolves once ``condition`` (an expression) is truthy, checked
    on every DOM mutation, and rejects after ``timeout_ms``."""
    return f"""new Promise((resolve, reject) => {{
        const check = () => {{ try {{ return {condition}; }} catch (e) {{ return false; }} }};
        if (check()) return resolve(true);
        const observer = new MutationObserver(() => {{
            if (check()) {{ observer.disconnect(); clearTimeout(timer); resolve(true); }}
        }});
        const timer = setTimeout(() => {{
            observer.disconnect();
            reject(new Error('timed out waiting for ' + {json.dumps(condition)}
                + '; page: ' + document.body.innerText));
        }}, {timeout_ms});
        observer.observe(document.body, {{subtree: true, childList: true, attributes: true,
                                          characterData: true}});
    }})"""


def item(text: str) -> str:
    """JavaScript: the list item showing ``text``, or undefined."""
    return (
        "[...document.querySelectorAll('#todos li')]"
        f".find(li => li.querySelector('.text').textContent === {json.dumps(text)})"
    )


async def test_browser_and_python_peer_share_the_todo_list(tmp_path: Path) -> None:
    try:
        chromium_executable()  # checked first: no point in starting serve.py without it
    except BrowserError as error:
        pytest.fail(str(error), pytrace=False)
    async with running_serve_py(tmp_path) as server:
        await share_the_list(server, tmp_path)


async def share_the_list(server: Server, tmp_path: Path) -> None:
    """The page and serve.py's peer, both ways: add, toggle, remove."""
    url = (await server.line_matching(r"Open (http://\S+) in a browser", limit=120))[1]
    server.keep_reading()

    async with (
        p2pdb.create_database(str(tmp_path / "todos.db")) as db,
        Browser(url, tmp_path / "chromium-profile") as browser,
    ):
        todos = await db.add_collection("todos", schema=todo_schema())
        # this process sees serve.py's commits to the file (p2pdb notices other processes')
        query = todos.find({"text": "written in the browser"})
        arrived, done = asyncio.Event(), asyncio.Event()

        def on_result(docs: list[p2pdb.Document]) -> None:
            if docs:
                arrived.set()
                if docs[0]["done"]:
                    done.set()

        live = query.observe().subscribe(on_result)
        try:
            # the page replicates with the Python peer
            await browser.evaluate(wait_in_page("document.body.dataset.peers === '1'"))

            # browser -> Python: a todo typed in the page reaches serve.py's SQLite file
            await browser.evaluate(
                "document.querySelector('#new-todo').value = 'written in the browser';"
                "document.querySelector('#add-form').requestSubmit()"
            )
            async with asyncio.timeout(20):
                await arrived.wait()
            [doc] = await query
            assert doc["done"] is False and len(doc["id"]) == 32

            # Python -> browser: a todo added on serve.py's console shows up in the page
            await server.command("add written in Python")
            await browser.evaluate(wait_in_page(item("written in Python")))

            # a toggle in the page reaches the file; a removal in Python leaves the page
            toggle = item("written in the browser") + ".querySelector('.toggle')"
            await browser.evaluate(f"{toggle}.click()")
            async with asyncio.timeout(20):
                await done.wait()
            await server.command("rm 2")  # the list is sorted by `created`: Python's is 2nd
            await browser.evaluate(wait_in_page(f"!{item('written in Python')}"))
            assert await browser.evaluate(f"{item('written in the browser')}.className") == "done"
            assert [d["text"] for d in await todos.find()] == ["written in the browser"]

            # another process writing to serve.py's file (as todo_app.py would) reaches the
            # page too: serve.py notices the commit and its peer streams it
            other = {"id": "f" * 32, "text": "from another process", "done": False}
            await todos.insert({**other, "created": 2e9})
            await browser.evaluate(wait_in_page(item("from another process")))
        except (TimeoutError, BrowserError, AssertionError) as error:
            chromium = [line for line in browser.log if "dbus" not in line][-15:]
            report = "\n".join(["serve.py:", *server.output[-15:], "chromium:", *chromium])
            raise AssertionError(f"{error!r}\n{report}") from error
        finally:
            live.dispose()
