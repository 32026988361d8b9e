"""``p2pdb peer``: an always-on peer that keeps a database file in sync with a topic."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from typing import Any

from .handler_factory import aiortc_connection_handler
from .pool import replicate_webrtc

__all__ = ["run_peer"]


async def run_peer(
    db_path: str,
    collection_name: str,
    schema: dict[str, Any],
    topic: str,
    signaling_url: str,
    host_addresses: list[str] | None = None,
) -> int:
    """Replicate one collection until SIGINT/SIGTERM, with a live status line."""
    import p2pdb

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    counts = {"received": 0, "sent": 0, "errors": 0}
    async with p2pdb.create_database(db_path) as db:
        collection = await db.add_collection(collection_name, schema=schema)
        handler = aiortc_connection_handler(
            signaling_url, ice_servers=[], host_addresses=host_addresses
        )
        pool = await replicate_webrtc(collection, topic, handler)
        pool.errors.subscribe(lambda _e: counts.__setitem__("errors", counts["errors"] + 1))
        counted: set[int] = set()
        # every write that a replication made here, whichever side of the pair we are
        collection.changes.subscribe(
            lambda e: _bump(counts, "received") if e.origin != p2pdb.LOCAL else None
        )
        print(f"p2pdb peer: {db_path} [{collection_name}] in topic {topic!r} (token {db.token})")
        async def status() -> str:
            for state in pool.peer_states.values():
                if id(state) not in counted:
                    counted.add(id(state))
                    state.sent.subscribe(lambda _d: _bump(counts, "sent"))
            sessions = list(pool.sessions.values())
            in_sync = bool(sessions) and all(s.in_sync() for s in sessions)
            return (
                f"\r  peers {len(sessions)}  docs {await collection.count()}  "
                f"received {counts['received']}  sent {counts['sent']}  "
                f"errors {counts['errors']}  {'in sync' if in_sync else 'syncing'}   "
            )

        try:
            while not stop.is_set():
                sys.stdout.write(await status())
                sys.stdout.flush()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        await stop.wait()
            print(await status())  # the state at exit
        finally:
            print()
            await pool.cancel()
    return 0


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] += 1
