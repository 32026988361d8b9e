"""A browser app and a Python peer sharing one todo list, live, over WebRTC.

    python examples/browser/serve.py                 # then open the URL it prints
    python examples/browser/serve.py --db todos.db --port 8000

It builds the page if ``dist/`` is missing (``npm ci && npm run build``, Node >= 20), then
runs, on 127.0.0.1: an HTTP server for the page, p2pdb's signaling server, and a p2pdb peer
replicating the ``todos`` collection of a SQLite file with every browser tab that opens the
page (RxDB 17.6, ``replicateWebRTC``). The terminal is the Python side of the list: the
commands of ``examples/todo_app.py`` (``add TEXT``, ``done N``, ``rm N``...), and the list is
printed each time it changes, whoever changed it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import http.server
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # todo_app.py: the schema and the console

from todo_app import HELP, TODO_SCHEMA, TodoApp  # noqa: E402

import p2pdb  # noqa: E402
from p2pdb.plugins.replication_webrtc import (  # noqa: E402
    aiortc_connection_handler,
    replicate_webrtc,
    start_signaling_server,
)

DIST = HERE / "dist"


def build_page() -> None:
    """Build dist/ with npm when it is missing (the first run needs the npm registry)."""
    if (DIST / "index.html").exists() and (DIST / "app.js").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(
            f"{DIST} is missing and npm is not installed: install Node >= 20, then run "
            f"`npm ci && npm run build` in {HERE}"
        )
    print(f"building the page: npm ci && npm run build (in {HERE})")
    steps = (
        [[npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"]]
        if not (HERE / "node_modules").exists()
        else []
    )
    for step in [*steps, [npm, "run", "build", "--silent"]]:
        if subprocess.run(step, cwd=HERE).returncode != 0:
            sys.exit(f"`{' '.join(step[1:])}` failed in {HERE}")


HOST = "127.0.0.1"


class PageHandler(http.server.SimpleHTTPRequestHandler):
    """Serves dist/, plus /config.json: where the page finds the signaling server."""

    def __init__(self, *args: Any, config: bytes, **kwargs: Any) -> None:
        self.config = config  # set before the base class handles the request
        super().__init__(*args, directory=str(DIST), **kwargs)

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        if self.path.split("?")[0] == "/config.json":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(self.config)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(self.config)
        else:
            super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the terminal for the todo list


async def console(app: TodoApp) -> None:
    """The todo_app.py commands on stdin, until `quit` or the end of input."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    # a pipe reader, unlike a thread blocked in readline(), can be cancelled by Ctrl-C
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode():
        try:
            if not await app.run(line):
                return
        except (ValueError, p2pdb.P2PDBError) as error:
            print(f"error: {error}")


async def serve(args: argparse.Namespace) -> None:
    """Run the page, the signaling server and the peer until the console ends."""
    async with (
        await start_signaling_server(host=HOST, port=args.signaling_port) as signaling,
        p2pdb.create_database(args.db) as db,
    ):
        todos = await db.add_collection("todos", schema=TODO_SCHEMA)
        print(f"database {args.db} (token {db.token}), signaling server {signaling.url}")
        config = {"signalingUrl": signaling.url, "topic": args.topic, "dbName": "p2pdb-todos"}
        page = http.server.ThreadingHTTPServer(
            (HOST, args.port), functools.partial(PageHandler, config=json.dumps(config).encode())
        )
        serving = asyncio.create_task(asyncio.to_thread(page.serve_forever))
        app = TodoApp(todos)
        live = app.query.observe().subscribe(app.render)
        pool = None
        try:
            handler = aiortc_connection_handler(
                signaling.url, ice_servers=[], host_addresses=[HOST] if args.loopback else None
            )
            pool = await replicate_webrtc(todos, args.topic, handler)
            pool.errors.subscribe(lambda error: print(f"replication: {error}"))
            pool.peers.subscribe(lambda peers: print(f"-- {len(peers)} peer(s) --"))
            print(f"Open http://{HOST}:{page.server_address[1]}/ in a browser")
            if args.no_console:
                await asyncio.Event().wait()  # until Ctrl-C or SIGTERM
            else:
                print(HELP)
                await console(app)
        finally:
            live.dispose()
            if pool is not None:
                await pool.cancel()
            await asyncio.to_thread(page.shutdown)
            await serving
            page.server_close()


def main(argv: list[str] | None = None) -> int:
    """Parse the options, build the page if needed, and serve until quit."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="todos.db", help="the SQLite file (default todos.db)")
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (0: any free one)")
    parser.add_argument("--signaling-port", type=int, default=0, help="default: any free one")
    parser.add_argument("--topic", default="p2pdb-example-todos", help="the WebRTC room")
    parser.add_argument(
        "--loopback",
        action="store_true",
        help="offer only 127.0.0.1 as ICE candidate (for a machine without a network, with a "
        "browser started with --allow-loopback-in-peer-connection)",
    )
    parser.add_argument("--no-console", action="store_true", help="ignore stdin")
    args = parser.parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # live in a pipe too
    build_page()

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await serve(args)

    try:
        with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
            asyncio.run(run())
    except OSError as error:  # a port in use, most likely
        sys.exit(f"cannot serve on {HOST}: {error} (try another --port)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
