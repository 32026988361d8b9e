"""A p2pdb websocket replication server in its own OS process (for memory figures).

Run as a script (the child)::

    python server_process.py --db FILE --docs 3000 [--drain-timeout 2]

It opens the SQLite file, adds a ``todos`` collection holding ``--docs`` documents of about
300 bytes, serves it on 127.0.0.1 (a port chosen by the OS) and writes JSON lines on stdout:
``{"event": "ready", "port"}``, then ``{"event": "error", "code", "message", "limit"}`` for
every error on ``server.errors``. It stops when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "text": {"type": "string"},
        "n": {"type": "integer"},
    },
    "required": ["id", "text"],
}


def emit(event: str, **fields: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps({"event": event, **fields}) + b"\n")
    sys.stdout.buffer.flush()


async def main(args: argparse.Namespace) -> None:
    import p2pdb
    from p2pdb.plugins.replication_websocket import ServerOptions, start_replication_server
    from p2pdb.replication.limits import PeerLimits

    async with p2pdb.create_database(args.db) as db:
        todos = await db.add_collection("todos", schema=SCHEMA)
        filler = "x" * 260
        await todos.bulk_insert(
            [{"id": f"doc-{i:06d}", "text": filler, "n": i} for i in range(args.docs)]
        )
        options = ServerOptions(limits=PeerLimits(drain_timeout=args.drain_timeout))
        async with await start_replication_server(db, port=0, options=options) as server:
            server.errors.subscribe(
                lambda e: emit(
                    "error", code=e.code, message=e.message, limit=e.parameters.get("limit")
                )
            )
            emit("ready", port=server.port)
            loop = asyncio.get_running_loop()
            reader = asyncio.StreamReader()
            await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
            await reader.read()  # until the parent closes stdin


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--docs", type=int, default=3000)
    parser.add_argument("--drain-timeout", type=float, default=30.0)
    asyncio.run(main(parser.parse_args()))
