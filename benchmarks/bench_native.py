"""The native WebRTC engine (libdatachannel) against aiortc, in the same run.

    /work/venv312/bin/python benchmarks/bench_native.py [--rounds 3] [--docs 10000]
                                                        [--size 1000] [--only raw,stream,push]

Needs Python >= 3.12 with ``aiolibdatachannel`` (``pip install 'p2pdb[native]'``). Every
peer is its own OS process; this process runs the signaling server, relays commands, and
reads each child's CPU time from ``/proc/<pid>/stat`` (user + system, all threads: for the
native engine that includes libdatachannel's own threads). Each round runs every figure on
both engines, one after the other, so both see the same machine load; the tables give the
median over rounds and the range, and the per-round ratio native / aiortc.

* ``raw``: the bytes of the documents' JSON, sent as 60 KiB text messages on one ordered
  channel with p2pdb's flow control (wait above 512 KiB buffered, resume at 128 KiB), until
  the receiver acknowledges the last byte. aiortc through ``RTCPeerConnection``; native
  through p2pdb's own bridge (``native_bridge``), the code the engine runs.
* ``stream``: two p2pdb peers (``tests/webrtc/peer_process.py``); the master
  ``bulk_insert``s ``--docs`` documents of ``--size`` bytes; time until the fork holds them
  all (they travel as stream events and pulls).
* ``push``: the same with the fork writing: it pushes ``masterWrite`` batches of 100.
* ``rxdb`` (add it to ``--only``): RxDB 17.6 <-> RxDB 17.6 in Node on the same documents
  (``tests/interop/bench_rxdb.mjs``: two peer processes, node-datachannel), the issue's
  yardstick: the tables then give stream and push docs/s of both engines over RxDB's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [
    str(ROOT),
    str(ROOT / "benchmarks"),
    str(ROOT / "tests"),
    str(ROOT / "tests" / "webrtc"),
]

from _child import JsonChild, emit  # noqa: E402

ENGINES = ("aiortc", "native")
TOPIC = "bench-native-room"
MESSAGE = 60 * 1024
HIGH_WATER, LOW_WATER = 512 * 1024, 128 * 1024
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (every thread)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


# -- raw children -----------------------------------------------------------------------------


class RawEnd:
    """One end of a raw channel: ``send``, ``buffered``, a low-water event, received bytes."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.low = asyncio.Event()
        self.inbox: asyncio.Queue[str] = asyncio.Queue()
        self.got = 0
        self.expect = 0
        self.send: Any = None
        self.buffered: Any = None

    def on_message(self, message: str | bytes) -> None:
        if self.expect:
            self.got += len(message)
            if self.got >= self.expect:
                self.got = 0
                self.send("ack")
        else:
            self.inbox.put_nowait(message if isinstance(message, str) else message.decode())


async def aiortc_end(role: str, command: Any) -> tuple[RawEnd, Any]:
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]
    end = RawEnd()
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))

    def attach(channel: Any) -> None:
        end.send, end.buffered = channel.send, lambda: channel.bufferedAmount
        channel.bufferedAmountLowThreshold = LOW_WATER
        channel.on("bufferedamountlow", end.low.set)
        channel.on("message", end.on_message)
        channel.on("open", end.opened.set)
        if channel.readyState == "open":
            end.opened.set()

    if role == "sender":
        attach(pc.createDataChannel("bench", ordered=True))
        await pc.setLocalDescription(await pc.createOffer())
        emit(event="offer", sdp=pc.localDescription.sdp)
        answer = await command()
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
    else:
        pc.on("datachannel", attach)
        offer = await command()
        await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        emit(event="answer", sdp=pc.localDescription.sdp)
    return end, pc.close


async def native_end(role: str, command: Any) -> tuple[RawEnd, Any]:
    from p2pdb.plugins.replication_webrtc.native_bridge import (
        ChannelEvents,
        NativeChannel,
        NativeConfig,
        NativePeerConnection,
    )
    from p2pdb.plugins.replication_webrtc.native_engine import load_native
    from p2pdb.plugins.replication_webrtc.native_link import filter_host_candidates

    end = RawEnd()

    def attach(channel: NativeChannel) -> None:
        end.send, end.buffered = channel.send, lambda: channel.bufferedAmount
        channel.bufferedAmountLowThreshold = LOW_WATER
        events = ChannelEvents(end.opened.set, end.on_message, lambda: None, end.low.set, print)
        channel.listen(events, 1 << 30)

    pc = NativePeerConnection(
        load_native(), NativeConfig(), on_state=lambda _state: None, on_channel=attach
    )
    if role == "sender":
        attach(pc.create_channel("bench"))
        sdp = filter_host_candidates(await pc.describe("offer"), ["127.0.0.1"])
        emit(event="offer", sdp=sdp)
        await pc.set_remote((await command())["sdp"], "answer")
    else:
        await pc.set_remote((await command())["sdp"], "offer")
        emit(event="answer", sdp=filter_host_candidates(await pc.describe("answer"), ["127.0.0.1"]))
    return end, pc.close


async def raw_child(engine: str, role: str) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def command() -> dict[str, Any]:
        line = await reader.readline()
        if not line:
            raise SystemExit(0)
        result: dict[str, Any] = orjson.loads(line)
        return result

    end, close = await (native_end if engine == "native" else aiortc_end)(role, command)
    await end.opened.wait()
    emit(event="open")
    while True:
        cmd = await command()
        if cmd["cmd"] == "expect":
            end.expect, end.got = cmd["bytes"], 0
            emit(event="expecting")
        elif cmd["cmd"] == "throughput":
            total, payload = cmd["bytes"], "x" * MESSAGE
            t0, sent = time.monotonic(), 0
            while sent < total:
                if end.buffered() > HIGH_WATER:
                    end.low.clear()
                    if end.buffered() > HIGH_WATER:
                        await end.low.wait()
                piece = payload if total - sent >= MESSAGE else payload[: total - sent]
                end.send(piece)
                sent += len(piece)
            assert await end.inbox.get() == "ack"
            emit(event="throughput", seconds=time.monotonic() - t0)
        elif cmd["cmd"] == "quit":
            break
    await close()


async def raw_round(engine: str, total: int) -> tuple[float, float]:
    """Seconds and CPU seconds (both processes) to move ``total`` bytes."""
    sender = await JsonChild.start(__file__, "--raw-child", engine, "sender")
    receiver = await JsonChild.start(__file__, "--raw-child", engine, "receiver")
    try:
        receiver.send(**await sender.read())
        sender.send(**await receiver.read())
        await sender.read()
        await receiver.read()
        receiver.send(cmd="expect", bytes=total)
        await receiver.read()
        pids = (sender.process.pid, receiver.process.pid)
        cpu0 = sum(cpu_seconds(pid) for pid in pids)
        sender.send(cmd="throughput", bytes=total)
        seconds = (await sender.read(300))["seconds"]
        return seconds, sum(cpu_seconds(pid) for pid in pids) - cpu0
    finally:
        await sender.quit()
        await receiver.quit()


async def rxdb_round(args: argparse.Namespace) -> tuple[float, float]:
    """Seconds for RxDB <-> RxDB to move the same documents (CPU not measured: 0)."""
    process = await asyncio.create_subprocess_exec(
        "node", "bench_rxdb.mjs", "--docs", str(args.docs), "--size", str(args.size),
        cwd=ROOT / "tests" / "interop", stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(600):
        out, _ = await process.communicate()
    result = orjson.loads(out.strip().splitlines()[-1])
    return float(result["seconds"]), 0.0


# -- p2pdb peers ------------------------------------------------------------------------------


async def token_of(path: Path) -> str:
    import p2pdb

    async with p2pdb.create_database(str(path)) as db:
        return db.token


async def replication_round(
    engine: str, writer_leads: bool, args: argparse.Namespace, url: str, folder: Path
) -> tuple[float, float]:
    """Seconds and CPU seconds (both processes) until the reader holds the writer's bulk."""
    from peer_process import ChildPeer

    from p2pdb.plugins.replication_webrtc import is_master

    folder.mkdir(parents=True)  # noqa: ASYNC240 - once per round, outside the timing
    paths = [folder / "x.db", folder / "y.db"]
    tokens = [await token_of(p) for p in paths]
    x_leads = is_master(tokens[0], tokens[1])
    a_path, b_path = (paths[0], paths[1]) if x_leads == writer_leads else (paths[1], paths[0])
    os.environ["P2PDB_WEBRTC_ENGINE"] = engine  # inherited by the children
    a = await ChildPeer.start(a_path, url, TOPIC, folder / "a.log")
    b = await ChildPeer.start(b_path, url, TOPIC, folder / "b.log")
    try:
        await b.expect("first_sync", within=60)
        await a.expect("first_sync", within=60)
        cpu0 = cpu_seconds(a.pid) + cpu_seconds(b.pid)
        inserted = await a.request(
            "insert", "inserted", prefix="bulk-", count=args.docs, size=args.size, within=300
        )
        reached = await b.request("wait_count", "reached", count=args.docs, within=600)
        cpu = cpu_seconds(a.pid) + cpu_seconds(b.pid) - cpu0
        return reached["t"] - inserted["t0"], cpu
    finally:
        await a.quit()
        await b.quit()


def summary(values: list[float]) -> str:
    def fmt(x: float) -> str:
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"

    return f"{fmt(statistics.median(values))} [{fmt(min(values))}-{fmt(max(values))}]"


async def main(args: argparse.Namespace) -> None:
    from peer_process import make_docs

    from p2pdb.plugins.replication_webrtc import start_signaling_server

    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    docs = make_docs("bulk-", args.docs, args.size)
    total = sum(len(orjson.dumps({**d, "_deleted": False})) for d in docs) + args.docs
    only = set(args.only.split(","))
    print(
        f"# {sys.version.split()[0]}; load {os.getloadavg()[0]:.2f}; {args.rounds} rounds; "
        f"{args.docs} docs of ~{args.size} B ({total / 1e6:.2f} MB of JSON)",
        flush=True,
    )
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    work = Path(tempfile.mkdtemp(prefix="bench-native-"))
    server = await start_signaling_server(port=0)
    try:
        for round_no in range(args.rounds):
            if "rxdb" in only:
                seconds, _ = await rxdb_round(args)
                results.setdefault(("rxdb", "node"), []).append((seconds, 0.0))
                print(f"# round {round_no + 1} rxdb<->rxdb: {seconds:.3f} s", flush=True)
            for figure in ("raw", "stream", "push"):
                if figure not in only:
                    continue
                for engine in ENGINES if round_no % 2 == 0 else tuple(reversed(ENGINES)):
                    if figure == "raw":
                        measured = await raw_round(engine, total)
                    else:
                        folder = work / f"{figure}-{engine}-{round_no}"
                        measured = await replication_round(
                            engine, figure == "stream", args, server.url, folder
                        )
                    results.setdefault((figure, engine), []).append(measured)
                    print(f"# round {round_no + 1} {figure} {engine}: {measured[0]:.3f} s, "
                          f"{measured[1]:.2f} CPU s", flush=True)  # fmt: skip
    finally:
        await server.close()
    print(f"\n# load at the end {os.getloadavg()[0]:.2f}; median [range] over rounds")
    print("| figure | aiortc | native | native / aiortc (per round) |")
    print("|---|---|---|---|")
    for figure in ("raw", "stream", "push"):
        if (figure, "aiortc") not in results:
            continue
        base, native = results[(figure, "aiortc")], results[(figure, "native")]
        unit, amount = ("MB/s", total / 1e6) if figure == "raw" else ("docs/s", args.docs)
        rates = [[amount / s for s, _ in runs] for runs in (base, native)]
        speedup = [n / b for b, n in zip(rates[0], rates[1], strict=True)]
        print(f"| {figure} {unit} | {summary(rates[0])} | {summary(rates[1])} | "
              f"{summary(speedup)}x faster |")  # fmt: skip
        cpus = [[c for _, c in runs] for runs in (base, native)]
        less = [b / n for b, n in zip(cpus[0], cpus[1], strict=True)]
        print(f"| {figure} CPU s (both processes) | {summary(cpus[0])} | {summary(cpus[1])} | "
              f"{summary(less)}x less |")  # fmt: skip
        if figure != "raw" and ("rxdb", "node") in results:
            rx = [args.docs / s for s, _ in results[("rxdb", "node")]]
            over = [[r / x for r, x in zip(rates[i], rx, strict=True)] for i in (0, 1)]
            print(f"| {figure} / RxDB<->RxDB ({summary(rx)} docs/s) | {summary(over[0])} | "
                  f"{summary(over[1])} | target >= 1.0 (aiortc), >= 2.0 (native) |")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--only", default="raw,stream,push", help="raw,stream,push,rxdb")
    parser.add_argument("--raw-child", nargs=2, metavar=("ENGINE", "ROLE"))
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.raw_child:
        asyncio.run(raw_child(*arguments.raw_child))
    else:
        asyncio.run(main(arguments))
