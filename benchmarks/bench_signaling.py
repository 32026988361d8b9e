"""Signaling nodes sharing rooms through Redis against one in-memory node, in the same run.

    python benchmarks/bench_signaling.py [--clients 300] [--rooms 30] [--nodes 3]
                                         [--signals 10] [--concurrency 50]
    python benchmarks/bench_signaling.py --clients 2000 --rooms 200     # the issue's size

Needs ``redis-server`` on the PATH (Debian: ``apt-get install redis-server``) and the
``redis`` package (``pip install p2pdb[redis]``). Every node is a child process
(``python -m p2pdb signaling [--redis URL]``) so that its memory (VmRSS) is its own; the
simulated clients are raw WebSockets speaking RxDB's protocol, all in this process.

For each setup (first the in-memory node, then ``--nodes`` nodes on one fresh Redis):

* **join latency**: from sending ``join`` until the ``joined`` frame that lists the client
  (median, p99), ``--concurrency`` clients joining at a time; client ``i`` joins room
  ``i % rooms`` through node ``(i // rooms) % nodes``, so every room spans every node;
* **signals/s**: every client sends ``--signals`` signals to the next member of its room (on
  another node with Redis), all at once; signals delivered per second until the last one;
* **RSS per node**: VmRSS of each node with every client joined (max over nodes), and the
  growth over the idle node.

Ratios are Redis / in-memory (for latency and RSS: lower is better; for signals/s higher).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
from _common import machine_line
from websockets.asyncio.client import ClientConnection, connect


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


async def start_node(redis_url: str | None) -> tuple[asyncio.subprocess.Process, str]:
    command = [sys.executable, "-m", "p2pdb", "signaling", "--port", "0"]
    command += ["--max-messages-per-second", "1000"]
    if redis_url is not None:
        command += ["--redis", redis_url]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    async with asyncio.timeout(30):
        banner = (await process.stdout.readline()).decode()
    found = re.search(r"listening on (ws://\S+?),? ", banner)
    if found is None:
        raise SystemExit(f"a signaling node printed {banner!r}")
    return process, found.group(1)


class Client:
    def __init__(self, socket: ClientConnection, peer_id: str, room: str) -> None:
        self.socket, self.id, self.room = socket, peer_id, room
        self.joined = asyncio.Event()
        self.signals = 0
        self.reader: asyncio.Task[None] | None = None

    async def read(self, received: list[int], all_done: asyncio.Event, expected: int) -> None:
        async for raw in self.socket:
            message = orjson.loads(raw)
            if message["type"] == "joined":
                if self.id in message["otherPeerIds"]:
                    self.joined.set()
            elif message["type"] == "signal":
                received[0] += 1
                if received[0] >= expected:
                    all_done.set()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def run_setup(urls: list[str], pids: list[int], args: argparse.Namespace) -> dict[str, Any]:
    idle = [vm_rss_kib(pid) for pid in pids]
    clients: list[Client] = []
    latencies: list[float] = []
    received = [0]
    all_done = asyncio.Event()
    expected = args.clients * args.signals
    gate = asyncio.Semaphore(args.concurrency)

    async def one(index: int) -> None:
        url = urls[(index // args.rooms) % len(urls)]
        room = f"bench-room-{index % args.rooms:05d}"
        async with gate:
            socket = await connect(url, max_queue=None)
            init = orjson.loads(await socket.recv())
            client = Client(socket, init["yourPeerId"], room)
            clients.append(client)
            client.reader = asyncio.create_task(client.read(received, all_done, expected))
            started = time.perf_counter()
            await socket.send(orjson.dumps({"type": "join", "room": room}).decode())
            await client.joined.wait()
            latencies.append(time.perf_counter() - started)

    async with asyncio.timeout(args.seconds):
        await asyncio.gather(*(one(i) for i in range(args.clients)))
    joined_rss = [vm_rss_kib(pid) for pid in pids]
    by_room: dict[str, list[Client]] = defaultdict(list)
    for client in clients:
        by_room[client.room].append(client)
    payload = {"type": "offer", "sdp": "v=0\r\n" + "a=x\r\n" * 40}

    async def send_all(client: Client, to: str) -> None:
        for _ in range(args.signals):
            frame = {
                "type": "signal",
                "room": client.room,
                "senderPeerId": client.id,
                "receiverPeerId": to,
                "data": payload,
            }
            await client.socket.send(orjson.dumps(frame).decode())

    started = time.perf_counter()
    sends = []
    for members in by_room.values():
        for position, client in enumerate(members):
            receiver = members[(position + 1) % len(members)]
            sends.append(send_all(client, receiver.id))
    try:
        async with asyncio.timeout(args.seconds):
            await asyncio.gather(*sends)
            await all_done.wait()
    except TimeoutError:
        print(f"  (only {received[0]} of {expected} signals within {args.seconds} s)")
    took = time.perf_counter() - started
    for client in clients:
        await client.socket.close()
        if client.reader is not None:
            client.reader.cancel()
    return {
        "median_ms": statistics.median(latencies) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "signals_per_s": received[0] / took,
        "rss_mib": max(joined_rss) / 1024,
        "growth_mib": max(j - i for j, i in zip(joined_rss, idle, strict=True)) / 1024,
    }


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            async with asyncio.timeout(10):
                await process.wait()
        except TimeoutError:
            process.kill()
            await process.wait()


async def main(args: argparse.Namespace) -> None:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (Debian: apt-get install redis-server)")
    print(machine_line())
    print(
        f"{args.clients} clients in {args.rooms} rooms, {args.signals} signals each; "
        f"{args.nodes} nodes on Redis vs 1 in-memory node"
    )
    results: dict[str, dict[str, Any]] = {}
    memory, url = await start_node(None)
    try:
        results["memory"] = await run_setup([url], [memory.pid], args)
    finally:
        await stop(memory)
    with tempfile.TemporaryDirectory() as folder:
        port = free_port()
        redis = await asyncio.create_subprocess_exec(
            *[binary, "--save", "", "--appendonly", "no", "--port", str(port)],
            *["--bind", "127.0.0.1", "--dir", folder, "--logfile", f"{folder}/redis.log"],
        )
        nodes: list[asyncio.subprocess.Process] = []
        try:
            for _ in range(50):  # until it listens
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    await asyncio.sleep(0.05)
            started = [await start_node(f"redis://127.0.0.1:{port}") for _ in range(args.nodes)]
            nodes = [process for process, _ in started]
            results["redis"] = await run_setup(
                [u for _, u in started], [p.pid for p in nodes], args
            )
            results["redis"]["redis_rss_mib"] = vm_rss_kib(redis.pid) / 1024
        finally:
            for process in nodes:
                await stop(process)
            await stop(redis)
    mem, red = results["memory"], results["redis"]
    print(f"\n{'figure':<28}{'1 node, memory':>16}{args.nodes:>4} nodes, Redis{'ratio':>9}")
    rows = [
        ("join->joined median (ms)", "median_ms"),
        ("join->joined p99 (ms)", "p99_ms"),
        ("signals/s", "signals_per_s"),
        ("RSS per node, max (MiB)", "rss_mib"),
        ("RSS growth per node (MiB)", "growth_mib"),
    ]
    for label, key in rows:
        ratio = red[key] / mem[key] if mem[key] else float("nan")
        print(f"{label:<28}{mem[key]:>16.1f}{red[key]:>17.1f}{ratio:>9.2f}")
    print(f"redis-server RSS: {red['redis_rss_mib']:.1f} MiB")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--rooms", type=int, default=30)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--signals", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=120.0, help="bound of each phase")
    return parser.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main(parse(sys.argv[1:])))
