"""``p2pdb demo``: three peers in three processes converge over WebRTC, conflict included.

The orchestrator starts a signaling server on a free loopback port and three peer processes
(``p2pdb demo-peer``), each with its own SQLite file in a temporary folder. It drives them
over stdin/stdout (JSON lines): every peer writes, two peers edit the same todo while their
replications are paused, then everything resumes and must converge within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from p2pdb.commands.output import StatusLine

from .handler_factory import aiortc_connection_handler
from .pool import replicate_webrtc
from .signaling_server import start_signaling_server

__all__ = ["TODO_SCHEMA", "run_demo", "run_demo_peer"]

TOPIC = "p2pdb-demo-room"
PEERS = ("peer-a", "peer-b", "peer-c")

#: The schema of the demo's todo list (RxDB form).
TODO_SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 64},
        "text": {"type": "string"},
        "done": {"type": "boolean"},
        "author": {"type": "string"},
        "updated_at": {"type": "number"},
    },
    "required": ["id", "text", "done", "updated_at"],
}


def _say(message: str) -> None:
    print(message, flush=True)


# -- one peer process ------------------------------------------------------------------------


async def run_demo_peer(db_path: str, name: str, signaling_url: str, topic: str) -> int:
    """A demo peer: replicate a todo collection and obey JSON-line commands on stdin."""
    import p2pdb
    from p2pdb.conflicts import last_write_wins

    db = await p2pdb.create_database(db_path)
    todos = await db.add_collection(
        "todos", schema=TODO_SCHEMA, conflict_handler=last_write_wins("updated_at")
    )
    handler = aiortc_connection_handler(signaling_url, ice_servers=[], host_addresses=["127.0.0.1"])
    pool = await replicate_webrtc(todos, topic, handler)
    out = sys.stdout

    def emit(message: dict[str, Any]) -> None:
        out.write(orjson.dumps(message).decode() + "\n")
        out.flush()

    watched: set[int] = set()

    def watch_conflicts() -> None:
        for state in pool.peer_states.values():
            if id(state) not in watched:
                watched.add(id(state))
                state.conflicts.subscribe(
                    lambda c: emit(
                        {
                            "event": "conflict",
                            "id": c.resolved["id"],
                            "mine": c.conflict.new_document_state,
                            "theirs": c.conflict.real_master_state,
                            "kept": c.resolved,
                        }
                    )
                )

    pool.peers.subscribe(lambda _peers: watch_conflicts())
    emit({"event": "ready", "name": name, "token": db.token})
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = orjson.loads(line)
            kind = command["cmd"]
            watch_conflicts()
            if kind == "write":
                await todos.bulk_upsert(command["docs"])
            elif kind == "edit":
                doc = await todos.find_one(command["id"])
                assert doc is not None
                await doc.patch(
                    {"text": command["text"], "author": name, "updated_at": time.time()}
                )
            elif kind in ("pause", "resume"):
                for state in pool.peer_states.values():
                    await (state.pause() if kind == "pause" else state.start())
            elif kind == "state":
                docs = [d.to_dict() for d in await todos.find()]
                digest = hashlib.sha256(orjson.dumps(docs, option=orjson.OPT_SORT_KEYS))
                emit(
                    {
                        "count": len(docs),
                        "digest": digest.hexdigest()[:12],
                        "peers": len(pool.sessions),
                        "docs": docs,
                    }
                )
                continue
            elif kind == "quit":
                break
            emit({"ok": True})
    finally:
        await pool.cancel()
        await db.close()
    return 0


# -- the orchestrator ------------------------------------------------------------------------


class _PeerProcess:
    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self.conflicts: list[dict[str, Any]] = []
        self._answers: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if message.get("event") == "conflict":
                self.conflicts.append(message)
            else:
                await self._answers.put(message)

    async def next(self) -> dict[str, Any]:
        return await self._answers.get()

    async def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")
        await self.process.stdin.drain()
        return await self.next()

    async def stop(self) -> None:
        if self.process.returncode is None and self.process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                self.process.stdin.write(b'{"cmd": "quit"}\n')
                await self.process.stdin.drain()
            try:
                async with asyncio.timeout(10):
                    await self.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        self._reader.cancel()


def _todo(i: int, author: str) -> dict[str, Any]:
    return {
        "id": f"{author}-{i}",
        "text": f"todo {i} from {author}",
        "done": i % 2 == 0,
        "author": author,
        "updated_at": time.time(),
    }


async def _wait_converged(
    peers: list[_PeerProcess], want: int, bound: float
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + bound
    # rewritten in place on a terminal; in a log or pipe, a plain line every 2 s at most
    status = StatusLine(interval=2.0)
    while True:
        states = [await p.ask({"cmd": "state"}) for p in peers]
        line = "  ".join(
            f"{p.name}: {s['count']}/{want} docs, {s['peers']} peers"
            for p, s in zip(peers, states, strict=True)
        )
        status.show(f"  syncing... {line}")
        if all(s["count"] == want for s in states) and len({s["digest"] for s in states}) == 1:
            status.finish()
            return states
        if time.monotonic() > deadline:
            status.finish()
            raise TimeoutError(f"peers did not converge within {bound:.0f} s")
        await asyncio.sleep(0.2)


async def run_demo(bound: float = 60.0) -> int:
    """Run the whole demo; 0 when the three peers converge within ``bound`` seconds."""
    folder = Path(tempfile.mkdtemp(prefix="p2pdb-demo-"))
    server = await start_signaling_server(host="127.0.0.1", port=0)
    _say(f"p2pdb demo: signaling server on {server.url}, databases in {folder}")
    peers: list[_PeerProcess] = []
    try:
        for name in PEERS:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "p2pdb",
                "demo-peer",
                "--db",
                str(folder / f"{name}.db"),
                "--name",
                name,
                "--signaling",
                server.url,
                "--topic",
                TOPIC,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
            )
            peers.append(_PeerProcess(name, process))
        for peer in peers:
            async with asyncio.timeout(30):
                ready = await peer.next()
            _say(f"  started {peer.name} (pid {peer.process.pid}, database token {ready['token']})")
        _say("1. every peer writes 5 todos")
        for peer in peers:
            await peer.ask({"cmd": "write", "docs": [_todo(i, peer.name) for i in range(5)]})
        await _wait_converged(peers, 15, bound)
        _say("2. peer-a and peer-b go offline and both edit todo 'peer-c-0'")
        for peer in peers:
            await peer.ask({"cmd": "pause"})
        await peers[0].ask({"cmd": "edit", "id": "peer-c-0", "text": "buy oat milk (peer-a)"})
        await peers[1].ask({"cmd": "edit", "id": "peer-c-0", "text": "buy soy milk (peer-b)"})
        _say("3. back online: replication resolves the conflict (last_write_wins on updated_at)")
        for peer in peers:
            await peer.ask({"cmd": "resume"})
        states = await _wait_converged(peers, 15, bound)
        _say("4. final state, identical on every peer:")
        for doc in states[0]["docs"]:
            _say(f"     {doc['id']:<10} {'x' if doc['done'] else ' '} {doc['text']}")
        for peer, state in zip(peers, states, strict=True):
            _say(f"   {peer.name}: {state['count']} docs, digest {state['digest']}")
        for peer in peers:
            for c in peer.conflicts:
                _say(
                    f"   conflict on {c['id']!r} resolved by {peer.name}: mine said "
                    f"{c['mine']['text']!r}, theirs {c['theirs']['text']!r}; kept "
                    f"{c['kept']['text']!r} (the newer edit)"
                )
        _say("converged: all three peers hold the same todos.")
        return 0
    except TimeoutError as exc:
        _say(f"p2pdb demo FAILED: {exc}. Run it again with -v for logs.")
        return 1
    finally:
        for peer in peers:
            await peer.stop()
        await server.close()
        shutil.rmtree(folder, ignore_errors=True)
