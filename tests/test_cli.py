"""The ``p2pdb`` command line, run as a user runs it: real processes, real sockets."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from pathlib import Path

import pytest
import websockets
from schemas import PEER_SCHEMA


async def test_demo_converges_and_exits_zero() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pdb",
        "demo",
        "--bound",
        "60",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(110):
        output, _ = await process.communicate()
    text = output.decode()
    assert process.returncode == 0, text
    assert "\r" not in text  # in a pipe: plain lines, no in-place rewriting
    assert "converged: all three peers hold the same todos." in text
    assert "conflict on 'peer-c-0' resolved" in text
    digests = {line.split("digest ")[1] for line in text.splitlines() if "digest " in line}
    assert len(digests) == 1, text


async def test_signaling_command_serves_the_protocol(unused_tcp_port: int) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "p2pdb",
        "signaling",
        "--port",
        str(unused_tcp_port),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            banner = await process.stdout.readline()
            assert b"listening on ws://127.0.0.1" in banner
            async with websockets.connect(f"ws://127.0.0.1:{unused_tcp_port}") as socket:
                init = json.loads(await socket.recv())
                assert init["type"] == "init" and len(init["yourPeerId"]) == 12
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            assert await process.wait() == 0


@pytest.fixture
def unused_tcp_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_peer_command_keeps_a_file_in_sync(tmp_path: Path) -> None:
    """`p2pdb peer` replicates with a pool in this process; the test reads its SQLite file."""
    import p2pdb
    from p2pdb.plugins.replication_webrtc import (
        aiortc_connection_handler,
        replicate_webrtc,
        start_signaling_server,
    )

    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(PEER_SCHEMA))
    backup_path = str(tmp_path / "backup.db")
    async with await start_signaling_server(port=0) as server:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "p2pdb",
            "peer",
            "--db",
            backup_path,
            "--collection",
            "docs",
            "--schema",
            str(schema_file),
            "--topic",
            "backup-room",
            "--signaling",
            server.url,
            "--host-address",
            "127.0.0.1",
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            async with p2pdb.create_database(str(tmp_path / "app.db")) as db:
                docs = await db.add_collection("docs", schema=PEER_SCHEMA)
                await docs.insert({"id": "a", "text": "backed up"})
                handler = aiortc_connection_handler(
                    server.url, ice_servers=[], host_addresses=["127.0.0.1"]
                )
                async with await replicate_webrtc(docs, "backup-room", handler) as pool:
                    await pool.wait_for_first_peer()
                    async with p2pdb.create_database(backup_path) as backup_db:
                        backup = await backup_db.add_collection("docs", schema=PEER_SCHEMA)
                        arrived = backup.find_one("a").watch()
                        async with asyncio.timeout(20):
                            async for doc in arrived:  # another process's writes, via the tailer
                                if doc is not None:
                                    assert doc["text"] == "backed up"
                                    break
        finally:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(20):
                output, _ = await process.communicate()
        assert process.returncode == 0
        assert b"p2pdb peer:" in output and b"\r" not in output
        assert re.search(rb"docs 1  sent \d+  received 1 ", output.splitlines()[-1]), output


# -- two `p2pdb peer` processes --------------------------------------------------------------

SECRET_SCHEMA = {
    **PEER_SCHEMA,
    "properties": {**PEER_SCHEMA["properties"], "body": {"type": "string"}},
    "encrypted": ["body"],
}
PASSWORD = "correct horse battery"
STATUS = re.compile(
    r"peers (\d+)  docs (\d+)  sent (\d+)  received (\d+)  (in sync|syncing)  errors (\d+)"
)


class PeerProcess:
    """A ``p2pdb peer`` process whose stdout (a pipe) is read line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.log = bytearray()  # stderr, drained all along so the pipe never fills
        self._drain = asyncio.ensure_future(self._read_stderr())

    async def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.read(65536):
            self.log += chunk

    @classmethod
    async def start(
        cls,
        db: Path,
        schema: Path,
        url: str,
        *extra: str,
        password: str | None = None,
        verbose: bool = False,
    ) -> PeerProcess:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "p2pdb",
            *(["-v"] if verbose else []),
            "peer",
            "--db",
            str(db),
            "--collection",
            "docs",
            "--schema",
            str(schema),
            "--topic",
            "cli-peers-room",
            "--signaling",
            url,
            "--host-address",
            "127.0.0.1",
            "--status-interval",
            "0.2",
            *extra,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        assert process.stdin is not None
        if password is not None:
            process.stdin.write(password.encode() + b"\n")
        process.stdin.close()
        return cls(process)

    async def wait_for(self, pattern: str) -> str:
        """Read lines until one matches ``pattern``."""
        assert self.process.stdout is not None
        while True:
            line = (await self.process.stdout.readline()).decode()
            assert line, f"exited: {self.lines} {self.log.decode()}"
            self.lines.append(line.rstrip("\n"))
            if re.search(pattern, line):
                return line

    async def stop(self) -> str:
        """SIGTERM; the last status line (written at exit)."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        assert self.process.stdout is not None
        async with asyncio.timeout(20):
            rest = await self.process.stdout.read()
            await self.process.wait()
            await self._drain
        self.lines += rest.decode().splitlines()
        assert self.process.returncode == 0, self.log.decode()
        assert not any("\r" in line for line in self.lines)
        return [line for line in self.lines if STATUS.search(line)][-1]


def counts(line: str) -> tuple[int, int]:
    """``(sent, received)`` of a status line."""
    match = STATUS.search(line)
    assert match is not None, line
    return int(match.group(3)), int(match.group(4))


async def test_two_peers_serve_encrypted_files_and_agree_on_their_counts(tmp_path: Path) -> None:
    """Counts are documents over the wire: one side's sent is the other's received. Both
    databases are encrypted: the password comes from stdin for one, the environment for the
    other (neither shows in ps)."""
    import os

    import p2pdb
    from p2pdb.plugins.replication_webrtc import start_signaling_server

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SECRET_SCHEMA))
    a_path, b_path = tmp_path / "a.db", tmp_path / "b.db"
    for path, prefix, n in ((a_path, "a", 3), (b_path, "b", 2)):
        async with p2pdb.create_database(str(path), password=PASSWORD) as db:
            docs = await db.add_collection("docs", schema=SECRET_SCHEMA)
            await docs.bulk_insert(
                [
                    {"id": f"{prefix}{i}", "text": "t", "body": f"secret {prefix}{i}"}
                    for i in range(n)
                ]
            )
    os.environ["P2PDB_TEST_PEER_PASSWORD"] = PASSWORD
    try:
        async with await start_signaling_server(port=0) as server:
            a = await PeerProcess.start(
                a_path, schema, server.url, "--password-stdin", password=PASSWORD, verbose=True
            )
            b = await PeerProcess.start(
                b_path, schema, server.url, "--password-env", "P2PDB_TEST_PEER_PASSWORD"
            )
            synced = False
            try:
                async with asyncio.timeout(60):
                    await a.wait_for(r"docs 5 .* in sync")
                    await b.wait_for(r"docs 5 .* in sync")
                synced = True
            except TimeoutError:
                pass  # reported below, with what each peer printed
            finally:
                a_last, b_last = await a.stop(), await b.stop()
    finally:
        del os.environ["P2PDB_TEST_PEER_PASSWORD"]
    assert synced, f"not in sync within 60 s; a: {a_last}\n{a.log.decode()[-4000:]}\nb: {b_last}"
    a_sent, a_received = counts(a_last)
    b_sent, b_received = counts(b_last)
    assert (a_sent, a_received) == (b_received, b_sent), (a_last, b_last)
    assert a_sent >= 3 and b_sent >= 2  # each side's documents went over the wire
    assert "errors 0" in a_last and "errors 0" in b_last
    async with p2pdb.create_database(str(b_path), password=PASSWORD) as db:
        docs = await db.add_collection("docs", schema=SECRET_SCHEMA)
        got = await docs.find_one("a2").exec()
        assert got is not None and got["body"] == "secret a2"


async def test_peer_status_shows_the_last_error_with_its_code(tmp_path: Path) -> None:
    """Two peers whose schemas disagree: one side's status line names the error. The
    other runs with -v."""
    import p2pdb
    from p2pdb.plugins.replication_webrtc import start_signaling_server

    strict, loose = tmp_path / "strict.json", tmp_path / "loose.json"
    strict.write_text(json.dumps(PEER_SCHEMA))  # "n" is an integer
    loose_schema = {
        **PEER_SCHEMA,
        "properties": {**PEER_SCHEMA["properties"], "n": {"type": "number"}},
    }
    loose.write_text(json.dumps(loose_schema))
    async with p2pdb.create_database(str(tmp_path / "loose.db")) as db:
        docs = await db.add_collection("docs", schema=loose_schema)
        await docs.insert({"id": "x", "text": "t", "n": 1.5})
    async with await start_signaling_server(port=0) as server:
        a = await PeerProcess.start(tmp_path / "strict.db", strict, server.url)
        b = await PeerProcess.start(tmp_path / "loose.db", loose, server.url, verbose=True)
        # the refused document's error; a dropped link's WEBRTC_PEER_GONE may come between
        errors = r"errors [1-9]\d*  last error: \[[A-Z_]+\] .*'x'"
        try:
            async with asyncio.timeout(60):
                done, pending = await asyncio.wait(
                    [asyncio.ensure_future(p.wait_for(errors)) for p in (a, b)],
                    return_when=asyncio.FIRST_COMPLETED,
                )
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)  # done reading
                line = done.pop().result()
        finally:
            await a.stop()
            await b.stop()
    assert "'x'" in line, line  # the message names the document
    # -v: p2pdb's own debug lines, but no SDP from aiortc and no per-call aiosqlite lines
    log = b.log.decode()
    assert " p2pdb." in log and " DEBUG " in log, log[-2000:]
    assert "a=candidate" not in log and "aiosqlite" not in log and "aioice" not in log


def test_peer_status_is_rewritten_in_place_on_a_terminal(tmp_path: Path) -> None:
    """stdout a terminal (a pty): the status line is redrawn with carriage returns."""
    import os
    import pty
    import select
    import socket
    import subprocess
    import time

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(PEER_SCHEMA))
    server = subprocess.Popen(
        [sys.executable, "-m", "p2pdb", "signaling", "--port", str(port)],
        stdout=subprocess.PIPE,
    )
    main_fd, child_fd = pty.openpty()
    peer = None
    try:
        assert server.stdout is not None
        assert b"listening" in server.stdout.readline()
        peer = subprocess.Popen(
            [sys.executable, "-m", "p2pdb", "peer", "--db", str(tmp_path / "a.db")]
            + ["--collection", "docs", "--schema", str(schema), "--topic", "tty-room"]
            + ["--signaling", f"ws://127.0.0.1:{port}"],
            stdout=child_fd,
            stderr=subprocess.DEVNULL,
        )
        os.close(child_fd)
        seen = b""
        deadline = time.monotonic() + 30
        while seen.count(b"\rpeers 0") < 2 and time.monotonic() < deadline:
            ready, _, _ = select.select([main_fd], [], [], 1.0)
            if ready:
                seen += os.read(main_fd, 4096)
        assert seen.count(b"\rpeers 0  docs 0") >= 2, seen  # one line, drawn again and again
        assert b"\x1b[K" in seen  # each redraw clears the rest of the line
    finally:
        for process in (peer, server):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                assert process.wait(timeout=20) == 0
        os.close(main_fd)
        assert server.stdout is not None
        server.stdout.close()
