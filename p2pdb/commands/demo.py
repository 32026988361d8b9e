"""``p2pdb demo``: three peers in three processes converge over WebRTC, conflict included."""

from __future__ import annotations

import argparse

from .base import Command

__all__ = ["COMMAND"]


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bound",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="fail (exit status 1) unless the peers converge within this (default: %(default)s)",
    )


async def _run(args: argparse.Namespace) -> int:
    from p2pdb.plugins.replication_webrtc.demo import run_demo

    return await run_demo(args.bound)


COMMAND = Command(
    name="demo",
    help="watch three peers converge over WebRTC (nothing to set up)",
    description=(
        "Start a signaling server and three peer processes with their own database files in "
        "a temporary folder; every peer writes, two edit the same document offline, and all "
        "three converge. Everything is removed at the end."
    ),
    configure=_configure,
    run=_run,
)
