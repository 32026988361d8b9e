"""One peer of the nemesis run, in its own OS process, driven by JSON lines.

Run as a script::

    python nemesis_peer.py --db FILE --log FILE --signaling URL --topic TOPIC --name p0

It opens (or reopens, after a SIGKILL) its SQLite file with the public API, adds the
``docs`` collection and joins ``TOPIC`` with ``replicate_webrtc`` in the background (retried
until the signaling server answers: the nemesis may have killed it or taken loopback down).
Commands, one JSON object per line on stdin; events, one per line on stdout:

=======================  ===========================================================
``{"cmd": "write"}``     start the writer loop (``{"event": "writing", "w"}``)
``{"cmd": "stop"}``      stop it after the write in flight (``{"event": "stopped", "w"}``)
``{"cmd": "digest"}``    ``{"event": "digest", "hash", "count"}`` of every live document
``{"cmd": "quit"}``      leave the topic, close the database, ``{"event": "bye"}``
=======================  ===========================================================

Unprompted: ``ready`` (database open, token), ``joined`` (the pool started), ``error``
(a pool error's code).

**The write log.** Every write is written to ``--log`` twice, each line flushed and
fsynced: an ``intent`` line *before* the write starts and an ``ack`` line after its
``await`` returned. A SIGKILL can therefore leave at most one write that may or may not have
committed (an intent without an ack), and the checker allows both outcomes for it only.
Each write carries ``w``, this peer's write number (continued across restarts from the
log), so every written state is unique.

The workload: documents ``{name}-{k}`` are owned by this peer (inserted, updated, removed
only by it; an id is never reused after a remove), so their final state is exactly the
last acknowledged one; documents ``shared-{j}`` are upserted by every peer, so their final
state must be one some peer wrote, and the same on every peer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import os
import random
import sys
from pathlib import Path
from typing import Any

import orjson

SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "owner": {"type": "string", "maxLength": 20},
        "w": {"type": "integer"},
        "text": {"type": "string"},
    },
    "required": ["id", "owner", "w", "text"],
}
TOPIC = "p2pdb-nemesis-room"
CONFLICTS = ("master_wins", "lww")


def emit(event: str, **fields: Any) -> None:
    """One JSON event line on stdout."""
    sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
    sys.stdout.buffer.flush()


def read_log(path: Path) -> list[dict[str, Any]]:
    """The entries of a write log; a torn last line (killed mid-append) is skipped."""
    entries: list[dict[str, Any]] = []
    if not path.exists():
        return entries
    for line in path.read_bytes().splitlines():
        try:
            entries.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue
    return entries


class WriteLog:
    """The append-only intent/ack log of one peer (every line fsynced)."""

    def __init__(self, path: Path) -> None:
        entries = read_log(path)
        self.w = max((int(e["w"]) for e in entries), default=0)
        self.restarts = sum(1 for e in entries if e.get("s") == "start")
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.append({"s": "start", "w": self.w})

    def append(self, entry: dict[str, Any]) -> None:
        os.write(self.fd, orjson.dumps(entry) + b"\n")
        os.fsync(self.fd)

    def close(self) -> None:
        os.close(self.fd)


def handler(conflicts: str) -> Any:
    """The conflict handler: p2pdb's default, or last-write-wins on ``w`` (each writer's
    logical clock; a tombstone keeps the ``w`` of the state it removed and beats it)."""
    import p2pdb

    return p2pdb.last_write_wins("w") if conflicts == "lww" else p2pdb.master_wins


def document(name: str, doc_id: str, w: int) -> dict[str, Any]:
    return {"id": doc_id, "owner": name, "w": w, "text": f"{name}:{w}"}


async def writer(
    docs: Any,
    log: WriteLog,
    rng: random.Random,
    args: argparse.Namespace,
    stop: asyncio.Event,
) -> None:
    """Write until ``stop`` is set (checked between two writes, never in the middle)."""
    name = args.name
    own = [d.id for d in await docs.find({"owner": name}) if d.id.startswith(f"{name}-")]
    k = log.w + 1  # ids of new documents: never reused, even across restarts
    while not stop.is_set():
        roll = rng.random()
        log.w += 1
        w = log.w
        if roll < 0.4 or not own:
            doc_id = f"{name}-{k}"
            k += 1
            op, body = "insert", document(name, doc_id, w)
        elif roll < 0.7:
            op, doc_id = "update", rng.choice(own)
            body = document(name, doc_id, w)
        elif roll < 0.8:
            op, doc_id, body = "remove", rng.choice(own), None
        else:
            op, doc_id = "upsert", f"shared-{rng.randrange(args.shared)}"
            body = document(name, doc_id, w)
        log.append({"s": "intent", "w": w, "op": op, "id": doc_id, "doc": body})
        if op == "insert":
            await docs.insert(body)
            own.append(doc_id)
        elif op == "update":
            current = await docs.find_one(doc_id)
            assert current is not None, f"own document {doc_id} vanished"
            await current.patch({"w": w, "text": body["text"]})  # type: ignore[index]
        elif op == "remove":
            current = await docs.find_one(doc_id)
            assert current is not None, f"own document {doc_id} vanished"
            await current.remove()
            own.remove(doc_id)
        else:
            await docs.upsert(body)
        log.append({"s": "ack", "w": w, "op": op, "id": doc_id})
        # pace the writes (the CPU is shared with the other peers)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.pause)


async def join(docs: Any, args: argparse.Namespace) -> Any:
    """``replicate_webrtc`` retried until the signaling server lets us join."""
    from p2pdb.backoff import Backoff
    from p2pdb.errors import ReplicationError
    from p2pdb.plugins.replication_webrtc import aiortc_connection_handler, replicate_webrtc

    backoff = Backoff(0.2, 2.0)
    while True:
        handler = aiortc_connection_handler(
            args.signaling, ice_servers=[], host_addresses=["127.0.0.1"], connect_timeout=5.0
        )
        try:
            return await replicate_webrtc(docs, args.topic, handler)
        except ReplicationError as error:
            emit("join_failed", code=error.code)
            await asyncio.sleep(backoff.next_delay())


async def digest(docs: Any) -> tuple[str, int]:
    states = sorted((d.to_dict() for d in await docs.find()), key=lambda d: d["id"])
    return hashlib.sha256(orjson.dumps(states)).hexdigest(), len(states)


async def main_async(args: argparse.Namespace) -> None:
    import p2pdb
    from p2pdb.tasks import cancel_and_wait

    log = WriteLog(Path(args.log))
    rng = random.Random(f"{args.seed}/{args.name}/{log.restarts}")
    db = await p2pdb.create_database(args.db)
    docs = await db.add_collection("docs", schema=SCHEMA, conflict_handler=handler(args.conflicts))
    emit("ready", token=db.token, w=log.w)
    loop = asyncio.get_running_loop()
    pool: Any = None

    async def start_pool() -> None:
        nonlocal pool
        pool = await join(docs, args)
        pool.errors.subscribe(lambda e: emit("error", code=getattr(e, "code", type(e).__name__)))
        emit("joined")

    joining = loop.create_task(start_pool())
    writing: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            cmd = orjson.loads(line)["cmd"]
            if cmd == "write" and writing is None:
                stop.clear()
                writing = loop.create_task(writer(docs, log, rng, args, stop))
                emit("writing", w=log.w)
            elif cmd == "stop":
                if writing is not None:
                    stop.set()
                    try:
                        await writing
                    except Exception as error:  # reported, and the checker will tell
                        emit("writer_failed", error=repr(error))
                    writing = None
                emit("stopped", w=log.w)
            elif cmd == "digest":
                hash_, count = await digest(docs)
                emit("digest", hash=hash_, count=count, joined=pool is not None)
            elif cmd == "quit":
                break
    finally:
        await cancel_and_wait([joining] if writing is None else [writing, joining])
        if pool is not None:
            await pool.cancel()
        await db.close()
        log.close()
        emit("bye")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--signaling", required=True)
    parser.add_argument("--topic", default=TOPIC)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seed", default="0")
    parser.add_argument("--shared", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.02)
    parser.add_argument("--conflicts", choices=CONFLICTS, default="master_wins")
    asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
