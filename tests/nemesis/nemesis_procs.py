"""The processes of a nemesis round: peer programs and the signaling server, each one a
real OS process the nemesis can SIGKILL, SIGSTOP and restart (always by its own PID)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

PEER_SCRIPT = Path(__file__).resolve().with_name("nemesis_peer.py")
Event = dict[str, Any]
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child before exec: SIGKILL me when the harness dies (a killed run leaves no
    signaling server or peer behind in its namespace)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


class Child:
    """A child process with JSON-line events on stdout (stderr goes to ``log_path``)."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path
        self.events: list[Event] = []
        self.stopped = False  # SIGSTOPped by the nemesis
        self._new = asyncio.Event()
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def spawn(cls, argv: list[str], log_path: Path) -> Child:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                limit=2**20,
                preexec_fn=die_with_parent,
            )
        return cls(process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            try:
                self.events.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                self.events.append({"event": "line", "text": line.decode(errors="replace")})
            self._new.set()
        self.events.append({"event": "exited"})
        self._new.set()

    async def expect(
        self,
        event: str,
        predicate: Callable[[Event], bool] = lambda _e: True,
        *,
        within: float = 30.0,
        after: int = 0,
    ) -> Event:
        """The first ``event`` at index ``after`` or later satisfying ``predicate``."""
        try:
            async with asyncio.timeout(within):
                index = after
                while True:
                    while index < len(self.events):
                        found = self.events[index]
                        index += 1
                        if found["event"] == event and predicate(found):
                            return found
                        if found["event"] == "exited":
                            raise AssertionError(
                                f"pid {self.pid} exited while waiting for {event!r}: "
                                + self.log_tail()
                            )
                    self._new.clear()
                    await self._new.wait()
        except TimeoutError:
            raise AssertionError(
                f"pid {self.pid}: no {event!r} within {within} s: {self.log_tail()}"
            ) from None

    def send(self, cmd: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps({"cmd": cmd}) + b"\n")

    async def request(self, cmd: str, reply: str, *, within: float = 30.0) -> Event:
        after = len(self.events)
        self.send(cmd)
        return await self.expect(reply, within=within, after=after)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"

    def signal(self, signum: int) -> None:
        """Send ``signum`` to this child (by PID); a dead child is left alone."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)
        if signum == signal.SIGSTOP:
            self.stopped = True
        elif signum == signal.SIGCONT:
            self.stopped = False

    async def kill(self) -> None:
        """SIGKILL (by PID) and reap."""
        self.signal(signal.SIGKILL)
        await self.process.wait()
        await self._finish()

    async def quit(self, within: float = 15.0) -> None:
        """Ask politely (``quit``), SIGKILL if it does not exit in time."""
        if self.stopped:
            self.signal(signal.SIGCONT)
        if self.alive:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, AssertionError):
                self.send("quit")
            try:
                async with asyncio.timeout(within):
                    await self.process.wait()
            except TimeoutError:
                await self.kill()
        await self._finish()

    async def _finish(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._reader), 5)
        self._reader.cancel()
        if self.process.stdin is not None:
            self.process.stdin.close()


class Peer:
    """One peer slot: its files, and the process currently running it (restartable)."""

    def __init__(
        self, name: str, folder: Path, signaling_url: str, seed: int, conflicts: str
    ) -> None:
        self.name = name
        self.conflicts = conflicts
        self.db = folder / f"{name}.db"
        self.log = folder / f"{name}.writes"
        self.stderr = folder / f"{name}.stderr"
        self.signaling_url = signaling_url
        self.seed = seed
        self.child: Child | None = None

    async def start(self, *, write: bool) -> None:
        """Start (or restart, on the same file and log) and wait until the database is open."""
        argv = [
            sys.executable,
            str(PEER_SCRIPT),
            "--db",
            str(self.db),
            "--log",
            str(self.log),
            "--signaling",
            self.signaling_url,
            "--name",
            self.name,
            "--seed",
            str(self.seed),
            "--conflicts",
            self.conflicts,
        ]
        self.child = await Child.spawn(argv, self.stderr)
        await self.child.expect("ready", within=60)
        if write:
            await self.child.request("write", "writing")

    @property
    def running(self) -> Child:
        assert self.child is not None and self.child.alive, f"{self.name} is not running"
        return self.child


class Signaling:
    """``python -m p2pdb signaling`` on a fixed port (restarted on the same port)."""

    def __init__(self, port: int, folder: Path) -> None:
        self.port = port
        self.url = f"ws://127.0.0.1:{port}"
        self.stderr = folder / "signaling.stderr"
        self.child: Child | None = None

    async def start(self) -> None:
        argv = [sys.executable, "-m", "p2pdb", "signaling", "--port", str(self.port)]
        self.child = await Child.spawn(argv, self.stderr)
        await self.child.expect("line", lambda e: "listening" in e["text"], within=60)
