"""``p2pdb peer``: an always-on peer that keeps a database file in sync with a topic.

Its status line counts **documents sent and received over the wire**, whatever the roles:
documents in the ``masterWrite`` rows this side pushed (as a fork) or in the pull answers
and stream batches it handed out (as a master) are *sent*; the same messages arriving are
*received*. Both sides count the same messages, so one side's "sent" is the other side's
"received" once nothing is in flight (each transfer counts: a document pulled again after
a reconnect counts again).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass

from p2pdb.commands.output import StatusLine
from p2pdb.errors import P2PDBError
from p2pdb.replication.rpc import MessageSink

from .handler_factory import aiortc_connection_handler
from .peer import PeerMessage
from .pool import ReplicationPool, replicate_webrtc

__all__ = ["PeerSettings", "TransferCounts", "documents_in", "run_peer"]


@dataclass(frozen=True)
class PeerSettings:
    """Everything ``p2pdb peer`` needs (its command-line options, checked)."""

    db_path: str
    collection: str
    schema: Mapping[str, object]
    topic: str
    signaling_url: str
    host_addresses: list[str] | None = None
    password: str | None = None
    connect_timeout: float = 15.0
    #: Seconds between status lines when stdout is not a terminal.
    status_interval: float = 10.0


def documents_in(message: object) -> int:
    """How many documents a replication message carries: the rows of a ``masterWrite``
    request, the documents of a ``masterChangesSince`` answer or of a stream batch."""
    if not isinstance(message, Mapping):
        return 0
    if message.get("method") == "masterWrite":
        params = message.get("params")
        if isinstance(params, list) and params and isinstance(params[0], list):
            return len(params[0])
        return 0
    result = message.get("result")
    if isinstance(result, Mapping) and isinstance(result.get("documents"), list):
        return len(result["documents"])
    return 0


@dataclass
class TransferCounts:
    """Documents sent to and received from peers, and the pool's errors."""

    sent: int = 0
    received: int = 0
    errors: int = 0
    last_error: str = ""

    def on_message(self, message: PeerMessage) -> None:
        """Count a message from a peer."""
        self.received += documents_in(message.data)

    def on_error(self, error: Exception) -> None:
        """Remember an error of the pool (its code and message)."""
        self.errors += 1
        text = str(error) if isinstance(error, P2PDBError) else f"{type(error).__name__}: {error}"
        self.last_error = " ".join(text.split())

    def watch(self, pool: ReplicationPool) -> None:
        """Count what each new session sends (called as soon as the pool registers it,
        before it sends anything)."""
        for session in pool.sessions.values():
            if not isinstance(session.channel.sink, _CountingSink):
                session.channel.sink = _CountingSink(session.channel.sink, self)


class _CountingSink:
    """A :class:`MessageSink` that counts the documents of what it sends."""

    def __init__(self, inner: MessageSink, counts: TransferCounts) -> None:
        self.inner = inner
        self.counts = counts

    async def send(self, message: object) -> None:
        await self.inner.send(message)
        self.counts.sent += documents_in(message)


async def run_peer(settings: PeerSettings, stop: asyncio.Event) -> int:
    """Replicate one collection until ``stop`` is set, with a live status line."""
    import p2pdb

    counts = TransferCounts()
    status = StatusLine(interval=settings.status_interval)
    async with p2pdb.create_database(settings.db_path, password=settings.password) as db:
        collection = await db.add_collection(settings.collection, schema=settings.schema)
        handler = aiortc_connection_handler(
            settings.signaling_url,
            ice_servers=[],
            host_addresses=settings.host_addresses,
            connect_timeout=settings.connect_timeout,
        )
        pool = await replicate_webrtc(collection, settings.topic, handler)
        try:
            pool.peers.subscribe(lambda _peers: counts.watch(pool))
            pool.connection.messages.subscribe(counts.on_message)
            pool.errors.subscribe(counts.on_error)
            print(
                f"p2pdb peer: {settings.db_path} [{settings.collection}] in topic "
                f"{settings.topic!r} (token {db.token})",
                flush=True,
            )

            async def line() -> str:
                sessions = list(pool.sessions.values())
                in_sync = bool(sessions) and all(s.in_sync() for s in sessions)
                text = (
                    f"peers {len(sessions)}  docs {await collection.count()}  "
                    f"sent {counts.sent}  received {counts.received}  "
                    f"{'in sync' if in_sync else 'syncing'}  errors {counts.errors}"
                )
                return f"{text}  last error: {counts.last_error}" if counts.errors else text

            while not stop.is_set():
                status.show(await line())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        await stop.wait()
            status.finish(await line())  # the state at exit
        finally:
            await pool.cancel()
    return 0
