"""Library logging: every logger is a child of ``p2pdb``, which has a ``NullHandler``, and
an error is logged once (at one place), not by each layer it passes through."""

from __future__ import annotations

import ast
import asyncio
import json
import logging
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect

import p2pdb
from p2pdb.plugins.replication_webrtc import (
    aiortc_connection_handler,
    replicate_webrtc,
    start_signaling_server,
)

PACKAGE = Path(p2pdb.__file__).resolve().parent
SOURCE_ROOTS = (PACKAGE, (PACKAGE / "plugins").resolve())
SCHEMA = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {"id": {"type": "string", "maxLength": 64}},
    "required": ["id"],
}


def from_our_code(record: logging.LogRecord) -> bool:
    path = Path(record.pathname).resolve()
    return any(path.is_relative_to(root) for root in SOURCE_ROOTS)


def test_the_p2pdb_logger_has_a_null_handler() -> None:
    handlers = logging.getLogger("p2pdb").handlers
    assert any(isinstance(handler, logging.NullHandler) for handler in handlers), handlers


def test_an_unconfigured_application_sees_no_library_warnings() -> None:
    """Without a handler, Python's last resort would print our warnings to stderr."""
    code = "import logging, p2pdb; logging.getLogger('p2pdb.webrtc.pool').warning('unseen')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "unseen" not in done.stderr, done.stderr


def test_every_logger_is_named_under_p2pdb() -> None:
    """A fixed ``p2pdb.…`` name, never ``__name__`` (``plugins.…`` when imported that way)."""
    names: dict[str, str] = {}
    for root in SOURCE_ROOTS:
        for path in root.rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "getLogger"
                ):
                    arg = node.args[0] if node.args else None
                    name = arg.value if isinstance(arg, ast.Constant) else ast.unparse(node)
                    names[f"{path.name}:{node.lineno}"] = str(name)
    assert len(names) >= 10, names  # the scan found the module loggers
    wrong = {where: name for where, name in names.items() if name.split(".")[0] != "p2pdb"}
    assert not wrong, wrong


async def silent_peer(url: str, room: str, above: str) -> ClientConnection:
    """A signaling member that never answers, with an id above ``above`` (so the p2pdb
    side is the WebRTC initiator and its connect times out)."""
    for _ in range(500):
        socket = await connect(url)
        own = json.loads(await socket.recv())["yourPeerId"]
        if own > above:
            await socket.send(json.dumps({"type": "join", "room": room}))
            return socket
        await socket.close()
    raise RuntimeError("no signaling id above ours in 500 tries")


async def test_a_failed_webrtc_connect_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="p2pdb")
    db = await p2pdb.create_database(str(tmp_path / "a.db"))
    docs = await db.add_collection("docs", schema=SCHEMA)
    async with await start_signaling_server(port=0) as signaling:
        handler = aiortc_connection_handler(
            signaling.url, ice_servers=[], host_addresses=["127.0.0.1"], connect_timeout=0.5
        )
        pool = await replicate_webrtc(docs, "logging-room", handler)
        errors: asyncio.Queue[Exception] = asyncio.Queue()
        pool.errors.subscribe(on_next=errors.put_nowait)
        own = pool.connection.own_peer_id
        assert own is not None
        socket = await silent_peer(signaling.url, "logging-room", own)
        try:
            async with asyncio.timeout(10):
                error = await errors.get()
        finally:
            await pool.cancel()
            await socket.close()
            await db.close()
    assert isinstance(error, p2pdb.PeerError) and error.code == "WEBRTC_CONNECT_TIMEOUT"
    ours = [r for r in caplog.records if from_our_code(r)]
    assert ours, "nothing was logged"
    assert all(r.name.startswith("p2pdb.") for r in ours), {r.name for r in ours}
    timeouts = [r for r in ours if "No data channel to peer" in r.getMessage()]
    assert len(timeouts) == 1, [(r.name, r.getMessage()) for r in timeouts]
    repeated = {m: n for m, n in Counter(r.getMessage() for r in ours).items() if n > 1}
    assert not repeated, repeated
