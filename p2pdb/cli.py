"""The ``p2pdb`` command line: a signaling server, an always-on peer, and the demo.

The WebRTC plugin is imported only by the commands that need it, so ``import p2pdb`` stays
light.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Coroutine, Sequence
from typing import Any

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="p2pdb", description="Local-first document database with peer-to-peer sync."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    commands = parser.add_subparsers(dest="command", required=True)

    sig = commands.add_parser("signaling", help="run a signaling server")
    sig.add_argument("--host", default="127.0.0.1")
    sig.add_argument("--port", type=int, default=8080)

    peer = commands.add_parser("peer", help="keep a database file in sync with a topic")
    peer.add_argument("--db", required=True, help="SQLite file")
    peer.add_argument("--collection", required=True)
    peer.add_argument("--schema", required=True, help="JSON schema file (RxDB form)")
    peer.add_argument("--topic", required=True)
    peer.add_argument("--signaling", required=True, help="ws://host:port")
    peer.add_argument("--host-address", action="append", help="restrict ICE host candidates")

    demo = commands.add_parser("demo", help="three peers converge over WebRTC")
    demo.add_argument("--bound", type=float, default=60.0, help="seconds to converge")

    hidden = commands.add_parser("demo-peer")  # one process of the demo
    hidden.add_argument("--db", required=True)
    hidden.add_argument("--name", required=True)
    hidden.add_argument("--signaling", required=True)
    hidden.add_argument("--topic", required=True)
    return parser


async def _signaling(host: str, port: int) -> int:
    from p2pdb.plugins.replication_webrtc import start_signaling_server

    server = await start_signaling_server(host=host, port=port)
    print(f"p2pdb signaling server listening on {server.url} (Ctrl-C to stop)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.close()
    return 0


async def _peer(args: argparse.Namespace, schema: dict[str, object]) -> int:
    from p2pdb.plugins.replication_webrtc.node import run_peer

    return await run_peer(
        args.db, args.collection, schema, args.topic, args.signaling, args.host_address
    )


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is installed (the ``fast`` extra): aiortc is pure Python and
    its per-packet cost drops by a third or more."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    result: int = uvloop.run(coro)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``p2pdb`` command."""
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.ERROR,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        if args.command == "signaling":
            logging.getLogger("p2pdb").setLevel(logging.INFO)
            return _run(_signaling(args.host, args.port))
        if args.command == "peer":
            with open(args.schema, encoding="utf-8") as file:
                schema = json.load(file)
            return _run(_peer(args, schema))
        from p2pdb.plugins.replication_webrtc import demo

        if args.command == "demo":
            return _run(demo.run_demo(args.bound))
        return _run(demo.run_demo_peer(args.db, args.name, args.signaling, args.topic))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
