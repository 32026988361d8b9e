"""``p2pdb demo-peer``: one peer process of ``p2pdb demo`` (internal, hidden from --help)."""

from __future__ import annotations

import argparse

from .base import Command

__all__ = ["COMMAND"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="SQLite file")
    parser.add_argument("--name", required=True, help="the peer's name")
    parser.add_argument("--signaling", required=True, help="signaling server URL")
    parser.add_argument("--topic", required=True, help="topic to join")


async def _run(args: argparse.Namespace) -> int:
    from p2pdb.plugins.replication_webrtc.demo import run_demo_peer

    return await run_demo_peer(args.db, args.name, args.signaling, args.topic)


COMMAND = Command(
    name="demo-peer",
    help=None,
    description="One peer process of 'p2pdb demo', driven by JSON lines on stdin (internal).",
    configure=_configure,
    run=_run,
)
