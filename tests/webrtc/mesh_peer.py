"""A p2pdb peer of a many-peer topic, in its own OS process (partial mesh tests and bench).

Run as a script (the child)::

    python mesh_peer.py --db FILE --signaling ws://127.0.0.1:PORT --topic T --max-links 4

It opens the SQLite file, adds the ``docs`` collection of ``peer_process.py``, joins the topic
with ``replicate_webrtc(..., max_links=N)`` (loopback host candidates, no ICE servers) and
obeys JSON-line commands on stdin: ``insert`` (``prefix``, ``count``: one bulk insert;
answers ``inserted``), ``wait_count`` (``count``, ``timeout``: answers ``reached`` with the
``time.monotonic()`` of the write that made the count, or ``wait_timeout``), ``in_sync``
(``timeout``: answers ``in_sync`` once the pool is in sync with every connected peer, with
its time and the document bodies received so far, or ``sync_timeout``), ``quit``.
Unprompted events: ``ready`` (token, signaling id), ``peers`` (the signaling ids of the
connected peers and their count, on every change, and the most it ever had). Imported (the
parent), :func:`start_mesh_peer` starts one as a :class:`~peer_process.ChildPeer`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from peer_process import DOCS_SCHEMA, ChildPeer, emit, make_docs

from p2pdb.plugins.replication_webrtc.mesh import mesh_graph

SCRIPT = Path(__file__).resolve()


async def child_main(args: argparse.Namespace) -> None:
    import logging

    import p2pdb
    from p2pdb.errors import P2PDBError

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("p2pdb.webrtc.connection").setLevel(logging.INFO)
    from p2pdb.plugins.replication_webrtc import aiortc_connection_handler, replicate_webrtc

    loop = asyncio.get_running_loop()
    db = await p2pdb.create_database(args.db)
    docs = await db.add_collection("docs", schema=DOCS_SCHEMA)
    state = {"live": await docs.count(), "at": time.monotonic(), "most": 0}
    changed = asyncio.Event()

    def on_change(event: Any) -> None:
        if event.operation == "INSERT":
            state["live"] += 1
            state["at"] = time.monotonic()
            changed.set()

    docs.changes.subscribe(on_change)
    handler = aiortc_connection_handler(
        args.signaling, ice_servers=[], host_addresses=["127.0.0.1"], connect_timeout=15.0
    )
    pool = await replicate_webrtc(docs, args.topic, handler, max_links=args.max_links)

    def on_peers(peers: frozenset[Any]) -> None:
        state["most"] = max(state["most"], len(peers))
        ids = sorted(p.peer_id for p in peers)
        emit("peers", count=len(peers), most=state["most"], ids=ids)

    pool.peers.subscribe(on_peers)
    from p2pdb.replication.revs import bodies_in, is_stub

    def on_message(message: Any) -> None:  # document bodies received, and stubs apart
        state["bodies"] += bodies_in(message.data)
        result = message.data.get("result") if isinstance(message.data, dict) else None
        docs = result.get("documents") if isinstance(result, dict) else None
        if isinstance(docs, list):
            state["stubs"] += sum(1 for doc in docs if is_stub(doc))
        state["messages"] += 1

    state["bodies"] = state["stubs"] = state["messages"] = 0
    pool.connection.messages.subscribe(on_message)
    emit("ready", token=db.token, peer_id=pool.connection.own_peer_id, pid=os.getpid())
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = orjson.loads(line)
            if command["cmd"] == "insert":
                await docs.bulk_insert(make_docs(command["prefix"], command["count"], 100))
                emit("inserted", count=command["count"], t=time.monotonic())
            elif command["cmd"] == "wait_count":
                target = command["count"]
                try:
                    async with asyncio.timeout(command.get("timeout", 60)):
                        while state["live"] < target:
                            changed.clear()
                            await changed.wait()
                    emit("reached", count=state["live"], t=state["at"])
                except TimeoutError:
                    emit("wait_timeout", count=state["live"])
            elif command["cmd"] == "in_sync":
                try:
                    await pool.wait_for_in_sync(timeout=command.get("timeout", 60))
                    emit(
                        "in_sync",
                        t=time.monotonic(),
                        bodies=state["bodies"],
                        stubs=state["stubs"],
                        messages=state["messages"],
                        count=state["live"],
                    )
                except P2PDBError:
                    emit("sync_timeout", bodies=state["bodies"], count=state["live"])
            elif command["cmd"] == "quit":
                break
    finally:
        await pool.cancel()
        await db.close()
        emit("bye")


async def start_mesh_peer(
    db: Path, signaling_url: str, topic: str, max_links: int, log_path: Path
) -> ChildPeer:
    """Start a child peer (by its own PID, killed if it never gets ready)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = ["--db", str(db), "--signaling", signaling_url, "--topic", topic]
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            *argv,
            "--max-links",
            str(max_links),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env=env,
            limit=2**20,
        )
    peer = ChildPeer(process, log_path)
    try:
        peer.ready = await peer.expect("ready", within=60)
    except BaseException:
        await peer.kill()
        raise
    return peer


async def links_settle(peers: list[ChildPeer], max_links: int, within: float) -> None:
    """Wait until each peer is linked with exactly its neighbours in the graph every member
    computes from the member list (the surplus links dropped, the wanted ones open)."""
    graph = mesh_graph([str(p.ready["peer_id"]) for p in peers if p.ready], max_links)

    def state() -> str:
        lines = []
        for peer in peers:
            assert peer.ready is not None
            own = str(peer.ready["peer_id"])
            last = [e["ids"] for e in peer.events if e["event"] == "peers"][-1:]
            lines.append(f"{own}: wants {sorted(graph[own])}, has {last}")
        return "\n".join(lines)

    async def settle(peer: ChildPeer) -> None:
        assert peer.ready is not None
        wanted = sorted(graph[str(peer.ready["peer_id"])])
        while [e["ids"] for e in peer.events if e["event"] == "peers"][-1:] != [wanted]:
            await peer.expect("peers", within=within, after=len(peer.events))

    try:
        async with asyncio.timeout(within):
            await asyncio.gather(*(settle(p) for p in peers))
    except TimeoutError:
        raise AssertionError(f"the links did not settle within {within} s\n{state()}") from None
    except AssertionError as error:
        raise AssertionError(f"{error}\n{state()}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--signaling", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--max-links", type=int, default=8)
    asyncio.run(child_main(parser.parse_args()))


if __name__ == "__main__":
    main()
