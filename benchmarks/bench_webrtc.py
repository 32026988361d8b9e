"""WebRTC replication between two OS processes on loopback, against raw aiortc in the same run.

    python benchmarks/bench_webrtc.py [--docs 10000] [--size 1000] [--samples 100]
                                      [--only master,fork100,fork1000] [--uvloop]

Every peer is its own process (``tests/webrtc/peer_process.py`` for p2pdb peers, this script
with ``--raw-child`` for the raw aiortc pair); this process runs the signaling server and
relays commands. Times are ``time.monotonic()`` read in the children (one clock for all
processes on Linux).

Baseline (raw aiortc, two processes, one ordered data channel):

* throughput: the same number of bytes as the p2pdb documents' JSON, sent as 64 KiB text
  messages with flow control (wait above 512 KiB buffered, resume on ``bufferedamountlow`` at
  128 KiB: p2pdb's water marks), until the receiver acknowledges the last byte;
* RTT: median and p99 of 100 ping/pong round trips of a small message.

Per scenario (fresh database files; the role of the writer A is forced by picking which of two
databases writes, from their tokens):

* (a) one ``bulk_insert`` of ``--docs`` documents of ``--size`` bytes on A; time until B holds
  them all; docs/s and the ratio raw time / p2pdb time (target >= 0.50);
* (b) latency of a single insert on A until B's change event: ``--samples`` sequential
  inserts when idle (median; target < 3x raw RTT), then one insert every 10 ms while a
  second bulk of ``--docs`` runs, both in the same direction (A->B, behind the bulk) and in
  the opposite one (bulk B->A) (p99; target < 100 ms);
* (c) time from ``replicate_webrtc`` to the first "in sync" for the second peer of an empty
  topic, and to holding every document for a late third peer joining two peers that hold
  them (``wait_for_in_sync`` is not used there: a peer that leads every pair is "in sync"
  as soon as it has handed out what it holds, before its forks pushed anything to it).

Scenarios: ``master`` (A leads the pair: its 10,000-document change event goes out as one
chunked stream message), ``fork100``/``fork1000`` (A is the fork: it pushes ``masterWrite``
batches of ``batch_size`` 100 or 1000).
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
sys.path.insert(0, str(ROOT / "tests" / "webrtc"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _child import JsonChild, emit  # noqa: E402

HIGH_WATER, LOW_WATER = 512 * 1024, 128 * 1024
RAW_MESSAGE = 64 * 1024
TOPIC = "p2pdb-bench-room"


# -- raw aiortc child -----------------------------------------------------------------------


async def raw_child(role: str) -> None:
    import aioice.ice
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def command() -> dict[str, Any]:
        line = await reader.readline()
        if not line:
            raise SystemExit(0)
        result: dict[str, Any] = orjson.loads(line)
        return result

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    opened = asyncio.Event()
    channel_box: list[Any] = []
    inbox: asyncio.Queue[str] = asyncio.Queue()
    state = {"expect": 0, "got": 0}

    def attach(channel: Any) -> None:
        channel_box.append(channel)

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            if role == "receiver":
                if message == "ping":
                    channel.send("pong")
                    return
                state["got"] += len(message)
                if state["expect"] and state["got"] >= state["expect"]:
                    state["got"] = 0
                    channel.send("ack")
            else:
                inbox.put_nowait(message if isinstance(message, str) else message.decode())

        if channel.readyState == "open":
            opened.set()
        channel.on("open", opened.set)

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
    await opened.wait()
    channel = channel_box[0]
    emit(event="open")
    low = asyncio.Event()
    channel.bufferedAmountLowThreshold = LOW_WATER
    channel.on("bufferedamountlow", low.set)
    while True:
        cmd = await command()
        if cmd["cmd"] == "expect":
            state["expect"], state["got"] = cmd["bytes"], 0
            emit(event="expecting")
        elif cmd["cmd"] == "throughput":
            total, size = cmd["bytes"], cmd["size"]
            payload = "x" * size
            t0 = time.monotonic()
            sent = 0
            while sent < total:
                if channel.bufferedAmount > HIGH_WATER:
                    low.clear()
                    await low.wait()
                piece = payload if total - sent >= size else payload[: total - sent]
                channel.send(piece)
                sent += len(piece)
            assert await inbox.get() == "ack"
            emit(event="throughput", seconds=time.monotonic() - t0)
        elif cmd["cmd"] == "rtt":
            times = []
            for _ in range(cmd["count"]):
                t0 = time.monotonic()
                channel.send("ping")
                assert await inbox.get() == "pong"
                times.append(time.monotonic() - t0)
            emit(event="rtt", times=times)
        elif cmd["cmd"] == "quit":
            break
    await pc.close()


async def raw_child_process(role: str, *extra: str) -> JsonChild:
    return await JsonChild.start(__file__, "--raw-child", role, *extra, within=60)


async def raw_baseline(
    total_bytes: int, rounds: int = 3, *, uvloop: bool = False
) -> dict[str, float]:
    """The raw aiortc pair (two processes): throughput and round trip of small messages;
    ``uvloop``: both on uvloop (as the p2pdb peers they are compared with)."""
    extra = ["--uvloop"] if uvloop else []
    sender = await raw_child_process("sender", *extra)
    receiver = await raw_child_process("receiver", *extra)
    try:
        offer = await sender.read()
        receiver.send(**offer)
        answer = await receiver.read()
        sender.send(**answer)
        await sender.read()
        await receiver.read()
        seconds = []
        for _ in range(rounds):
            receiver.send(cmd="expect", bytes=total_bytes)
            await receiver.read()
            sender.send(cmd="throughput", bytes=total_bytes, size=RAW_MESSAGE)
            seconds.append((await sender.read(120))["seconds"])
        sender.send(cmd="rtt", count=100)
        times = (await sender.read())["times"]
    finally:
        await sender.quit()
        await receiver.quit()
    return {
        "seconds": statistics.median(seconds),
        "rtt_median": statistics.median(times),
        "rtt_p99": percentile(times, 99),
    }


# -- p2pdb scenarios ------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


async def token_of(path: Path) -> str:
    import p2pdb

    async with p2pdb.create_database(str(path)) as db:
        return db.token


async def latencies(
    a: Any, b: Any, prefix: str, samples: int, interval: float | None
) -> list[float]:
    """Insert ``samples`` single documents on ``a``; seconds until ``b`` saw each.
    ``interval=None``: one after the other; else one every ``interval`` seconds."""
    result: list[float] = []
    if interval is None:
        for i in range(samples):
            doc_id = f"{prefix}{i}"
            inserted = await a.request("insert_one", "inserted_one", id=doc_id)
            seen = await b.expect("seen", lambda e, d=doc_id: e["id"] == d + "000000")
            result.append(seen["t"] - inserted["t"])
        return result
    start = len(a.events)
    for i in range(samples):
        a.send("insert_one", id=f"{prefix}{i}")
        await asyncio.sleep(interval)
    for i in range(samples):
        doc_id = f"{prefix}{i}"
        inserted = await a.expect(
            "inserted_one", lambda e, d=doc_id: e["id"] == d, after=start, within=120
        )
        seen = await b.expect("seen", lambda e, d=doc_id: e["id"] == d + "000000", within=120)
        result.append(seen["t"] - inserted["t"])
    return result


async def scenario(
    name: str,
    writer_leads: bool,
    batch_size: int,
    args: argparse.Namespace,
    url: str,
    work: Path,
) -> dict[str, Any]:
    from peer_process import ChildPeer

    folder = work / name
    folder.mkdir()
    paths = [folder / "x.db", folder / "y.db"]
    tokens = [await token_of(p) for p in paths]
    from p2pdb.plugins.replication_webrtc import is_master

    x_leads = is_master(tokens[0], tokens[1])
    a_path, b_path = (paths[0], paths[1]) if x_leads == writer_leads else (paths[1], paths[0])
    extra = ["--batch-size", str(batch_size), "--watch-prefix", "lat-"]
    if args.uvloop:
        extra.append("--uvloop")
    a = await ChildPeer.start(a_path, url, TOPIC, folder / "a.log", *extra)
    b = await ChildPeer.start(b_path, url, TOPIC, folder / "b.log", *extra)
    out: dict[str, Any] = {"name": name}
    try:
        out["first_sync"] = (await b.expect("first_sync", within=60))["seconds"]
        await a.expect("first_sync", within=60)

        idle = await latencies(a, b, "lat-idle-", args.samples, None)
        out["idle_median"] = statistics.median(idle)
        out["idle_p99"] = percentile(idle, 99)

        n = args.docs
        inserted = await a.request(
            "insert", "inserted", prefix="bulk-", count=n, size=args.size, within=120
        )
        reached = await b.request("wait_count", "reached", count=n + args.samples, within=300)
        out["bulk_seconds"] = reached["t"] - inserted["t0"]

        # a second bulk A->B, and single inserts on A every 10 ms meanwhile
        await b.request("in_sync", "in_sync", within=120)
        await a.request("in_sync", "in_sync", within=120)
        a.send("insert", prefix="bulk2-", count=n, size=args.size)
        same = await latencies(a, b, "lat-same-", args.samples, 0.01)
        out["same_median"], out["same_p99"] = statistics.median(same), percentile(same, 99)
        await b.request("wait_count", "reached", count=2 * n + 2 * args.samples, within=300)

        # a bulk B->A, and single inserts on A every 10 ms meanwhile
        await b.request("in_sync", "in_sync", within=120)
        await a.request("in_sync", "in_sync", within=120)
        b.send("insert", prefix="bulk3-", count=n, size=args.size)
        other = await latencies(a, b, "lat-other-", args.samples, 0.01)
        out["other_median"], out["other_p99"] = statistics.median(other), percentile(other, 99)
        await a.request("wait_count", "reached", count=3 * n + 3 * args.samples, within=300)
        await b.request("in_sync", "in_sync", within=120)

        # a late third peer joins two peers holding the documents
        late = await ChildPeer.start(
            folder / "late.db", url, TOPIC, folder / "late.log", "--batch-size", str(batch_size)
        )
        try:
            assert late.ready is not None
            total = 3 * n + 3 * args.samples
            reached = await late.request("wait_count", "reached", count=total, within=300)
            out["late_first_sync"] = reached["t"] - late.ready["started"]
        finally:
            await late.quit()
        out["stats_a"] = await a.request("stats", "stats")
    finally:
        await a.quit()
        await b.quit()
    return out


def work_folder(path: str | None) -> Path:
    folder = Path(path or tempfile.mkdtemp(prefix="bench-webrtc-"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def document_bytes(count: int, size: int) -> int:
    from peer_process import make_docs

    docs = make_docs("bulk-", count, size)
    return sum(len(orjson.dumps({**d, "_deleted": False})) for d in docs) + count


async def main(args: argparse.Namespace) -> None:
    from p2pdb.plugins.replication_webrtc import start_signaling_server

    payload = document_bytes(args.docs, args.size)
    print(f"# {args.docs} documents of ~{args.size} B: {payload / 1e6:.2f} MB of JSON", flush=True)
    raw = await raw_baseline(payload, uvloop=args.uvloop)
    raw_rate = payload / raw["seconds"]
    print(
        f"# raw aiortc: {payload / 1e6:.2f} MB in {raw['seconds']:.3f} s "
        f"({raw_rate / 1e6:.1f} MB/s); RTT median {raw['rtt_median'] * 1e3:.2f} ms, "
        f"p99 {raw['rtt_p99'] * 1e3:.2f} ms",
        flush=True,
    )
    wanted = args.only.split(",")
    plan = [
        ("master", True, 100),
        ("fork100", False, 100),
        ("fork1000", False, 1000),
    ]
    results = []
    server = await start_signaling_server(port=0)
    try:
        work = work_folder(args.workdir)
        print(f"# databases and child logs in {work}", flush=True)
        for name, writer_leads, batch in plan:
            if name in wanted:
                result = await scenario(name, writer_leads, batch, args, server.url, work)
                results.append(result)
                print(f"# {name}: {result}", flush=True)
    finally:
        await server.close()

    rtt = raw["rtt_median"]
    head = (
        f"{'scenario':<10} {'docs/s':>8} {'MB/s':>6} {'vs raw':>7} "
        f"{'idle med':>9} {'vs RTT':>7} {'same p99':>9} {'other p99':>10} "
        f"{'1st sync':>9} {'late join':>9}"
    )
    print()
    print(head)
    print("-" * len(head))
    for r in results:
        seconds = r["bulk_seconds"]
        print(
            f"{r['name']:<10} {args.docs / seconds:>8.0f} {payload / seconds / 1e6:>6.2f} "
            f"{raw['seconds'] / seconds:>7.2f} {r['idle_median'] * 1e3:>7.2f}ms "
            f"{r['idle_median'] / rtt:>6.1f}x {r['same_p99'] * 1e3:>7.0f}ms "
            f"{r['other_p99'] * 1e3:>8.0f}ms {r['first_sync']:>8.2f}s "
            f"{r['late_first_sync']:>8.2f}s"
        )
    print()
    print(
        "targets: vs raw >= 0.50; idle median < 3x raw RTT "
        f"({3 * rtt * 1e3:.2f} ms); p99 during a bulk sync < 100 ms"
    )
    print(
        "same p99: single inserts A->B queued behind the bulk A->B (ordered delivery); "
        "other p99: single inserts A->B while a bulk runs B->A; late join: a third peer "
        f"until it holds all {3 * (args.docs + args.samples)} documents of A and B"
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--only", default="master,fork100,fork1000")
    parser.add_argument("--uvloop", action="store_true", help="run the peers on uvloop")
    parser.add_argument("--workdir", help="folder for the databases and logs (kept)")
    parser.add_argument("--raw-child", choices=["sender", "receiver"], help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.raw_child and arguments.uvloop:
        import uvloop

        uvloop.run(raw_child(arguments.raw_child))
    elif arguments.raw_child:
        asyncio.run(raw_child(arguments.raw_child))
    else:
        os.environ.setdefault("PYTHONPATH", str(ROOT))
        asyncio.run(main(arguments))
