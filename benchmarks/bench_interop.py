"""p2pdb <-> RxDB 17.6 WebRTC replication throughput, against RxDB <-> RxDB in the same run.

    python benchmarks/bench_interop.py [--docs 10000] [--size 1000] [--rounds 3] [--warmup 2000]
                                       [--only rxdb,p2pdb-master,p2pdb-fork] [--uvloop]
                                       [--direction both|to-p2pdb|to-rxdb] [--p2pdb-batch 100]
                                       [--prototype echo-filter,delayed-sack]

Needs Node >= 20 and ``cd tests/interop && npm ci``. Every RxDB peer is its own Node process
(``tests/interop/rxdb_peer.mjs``, memory storage, RxDB's default batch size 20); the p2pdb peer
runs in this process (a SQLite file, ``replicate_webrtc`` defaults: batch size 100), with
p2pdb's signaling server, all on 127.0.0.1. Documents are the ones of ``bench_rxdb.mjs``:
``{"id", "text": "x" * (size - 40), "n"}``, about ``--size`` bytes of JSON.

A transfer is one bulk insert of ``--docs`` documents on one peer, timed from the insert until
the other peer holds them all (the receiver counts them as they arrive: ``waitCount`` on an
RxDB peer, change events on p2pdb). How documents move depends on which side of the pair is
the replication master (elected from the two storage tokens), so every figure is compared
with the RxDB <-> RxDB transfer that uses the same mechanism:

* **master -> fork**: the master streams its change events (``masterChangeStream$``), the fork
  applies them (and pulls with ``masterChangesSince`` after a ``RESYNC``);
* **fork -> master**: the fork pushes ``masterWrite`` batches and waits for each answer.

Per round: a fresh RxDB pair measured both ways (one direction of each mechanism, whatever
roles the tokens gave), then one p2pdb <-> RxDB pair with p2pdb as master and one with p2pdb
as fork (roles forced from the tokens), each measured both ways. Every pair first moves
``--warmup`` documents each way, untimed, so that no timed transfer runs on a cold Node JIT
(the first transfer of a fresh RxDB process is up to twice as slow). Figures are medians over
rounds; ratios are per-round p2pdb figure / RxDB figure of the same mechanism (target >= 0.9).
The "each way" rows are total docs / total time over both roles (in a real topic every pair
is 50/50) against the same for the RxDB pair.

``--only`` and ``--direction`` pick parts (for ``py-spy record -- python
benchmarks/bench_interop.py --rounds 1 --warmup 0 --only p2pdb-fork --direction to-rxdb``).
The wire counts (requests and stream events per transfer, from the p2pdb side) explain the
round trips behind each figure. ``--prototype`` applies sketches of two proposed changes
(monkeypatches, not p2pdb code) to size what they would gain; see docs/rxdb.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "interop"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import Row, machine_line, median, print_table  # noqa: E402
from rxdb_harness import (  # noqa: E402
    DEFAULT_SCHEMA,
    P2pdbPeer,
    RxdbPeer,
    WireLog,
    is_master,
)

from p2pdb.plugins.replication_webrtc import start_signaling_server  # noqa: E402

TARGET = 0.9
WAIT_S = 600.0
MECHANISMS = ("master -> fork", "fork -> master")


# -- sketches (not p2pdb code): what two proposed changes would gain ------------------------


def prototype_echo_filter() -> None:
    """A fork drops, from a stream event that arrives while its ``masterWrite`` is still
    unanswered, the documents equal to the states it is pushing: the master's echo of that
    very push (RxDB and p2pdb masters stream a write before they answer it). Today the fork's
    stale-state rule treats them as doubtful and pulls the whole batch again."""
    from p2pdb.conflicts import deep_equal
    from p2pdb.plugins.replication_webrtc import session

    write = session._RemoteMaster.write

    async def remembering_write(self: Any, rows: Any) -> Any:
        self._inflight_rows = rows
        try:
            return await write(self, rows)
        finally:
            self._inflight_rows = None

    on_stream_event = session.PeerSession._on_stream_event

    def filtering_on_stream_event(self: Any, result: object) -> None:
        rows = getattr(self.state.handler, "_inflight_rows", None) if self.state else None
        if rows and isinstance(result, dict) and isinstance(result.get("documents"), list):
            pk = self.pool.collection.schema.primary_key
            pushing = {r.new_document_state[pk]: r.new_document_state for r in rows}
            result = {
                **result,
                "documents": [
                    d
                    for d in result["documents"]
                    if not (d.get(pk) in pushing and deep_equal(pushing[d[pk]], d))
                ],
            }
        on_stream_event(self, result)

    session._RemoteMaster.write = remembering_write  # type: ignore[method-assign]
    session.PeerSession._on_stream_event = filtering_on_stream_event  # type: ignore[method-assign]


def prototype_delayed_sack(every: int = 4, delay: float = 0.002) -> None:
    """aiortc's SCTP acknowledges every packet it receives (one DTLS-encrypted UDP datagram
    per packet). RFC 4960 6.2 allows acknowledging every second packet, with a short timer
    for the last one; this sketch acknowledges every ``every``-th packet or after ``delay``."""
    from aiortc import rtcsctptransport as sctp

    async def handle_data(self: Any, data: bytes) -> None:
        try:
            _, _, verification_tag, chunks = sctp.parse_packet(data)
        except ValueError:
            return
        init = any(isinstance(chunk, sctp.InitChunk) for chunk in chunks)
        if verification_tag != (0 if init else self._local_verification_tag):
            return
        for chunk in chunks:
            await self._receive_chunk(chunk)
        if not self._sack_needed:
            return
        self._unsacked = getattr(self, "_unsacked", 0) + 1
        if self._unsacked >= every or self._sack_misordered or self._sack_duplicates:
            self._unsacked = 0
            await self._send_sack()
        elif getattr(self, "_sack_timer", None) is None:

            def fire() -> None:
                self._sack_timer = None
                if self._sack_needed:
                    self._unsacked = 0
                    asyncio.ensure_future(self._send_sack())

            self._sack_timer = asyncio.get_running_loop().call_later(delay, fire)

    sctp.RTCSctpTransport._handle_data = handle_data  # type: ignore[method-assign]


PROTOTYPES = {"echo-filter": prototype_echo_filter, "delayed-sack": prototype_delayed_sack}


def make_docs(prefix: str, count: int, size: int) -> list[dict[str, Any]]:
    filler = "x" * max(0, size - 40)
    return [{"id": f"{prefix}-{i:06d}", "text": filler, "n": i} for i in range(count)]


async def rx_to_rx(
    rx: RxdbPeer, docs: list[dict[str, Any]], receiver: RxdbPeer, total: int
) -> float:
    """Seconds from ``bulkInsert`` on ``rx`` until ``receiver`` holds ``total`` documents."""
    arrived = asyncio.ensure_future(
        receiver.call("waitCount", count=total, timeoutMs=WAIT_S * 1000, within=WAIT_S)
    )
    await asyncio.sleep(0)  # the waitCount line goes out first (commands start in order)
    started = time.perf_counter()
    await rx.call("bulkInsert", docs=docs, within=WAIT_S)
    await arrived
    return time.perf_counter() - started


async def rx_to_py(rx: RxdbPeer, docs: list[dict[str, Any]], py: P2pdbPeer) -> float:
    """Seconds from ``bulkInsert`` on the RxDB peer until p2pdb committed every document."""
    wanted = {d["id"] for d in docs}
    done = asyncio.Event()

    def on_change(event: Any) -> None:
        wanted.discard(event.id)
        if not wanted:
            done.set()

    subscription = py.collection.changes.subscribe(on_change)
    try:
        started = time.perf_counter()
        await rx.call("bulkInsert", docs=docs, within=WAIT_S)
        async with asyncio.timeout(WAIT_S):
            await done.wait()
        return time.perf_counter() - started
    finally:
        subscription.dispose()


async def py_to_rx(py: P2pdbPeer, docs: list[dict[str, Any]], rx: RxdbPeer, total: int) -> float:
    """Seconds from p2pdb's ``bulk_insert`` until the RxDB peer holds ``total`` documents."""
    arrived = asyncio.ensure_future(
        rx.call("waitCount", count=total, timeoutMs=WAIT_S * 1000, within=WAIT_S)
    )
    await rx.call("count")  # the waitCount is subscribed before we insert
    started = time.perf_counter()
    result = await py.collection.bulk_insert(docs)
    assert not result.errors, result.errors[:3]
    await arrived
    return time.perf_counter() - started


def wire_counts(wire: WireLog, start: int) -> str:
    counts: collections.Counter[str] = collections.Counter()
    for direction, _pool, message in wire.entries[start:]:
        if "method" in message:
            who = "p2pdb" if direction == "out" else "RxDB"
            counts[f"{message['method']} by {who}"] += 1
        elif message.get("id") == "masterChangeStream$":
            counts[f"stream events {'sent' if direction == 'out' else 'received'}"] += 1
    return ", ".join(f"{n} {k}" for k, n in sorted(counts.items()) if not k.startswith("token"))


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="p2pdb-bench-interop-"))
        self.wire = WireLog()
        self.wire.install(setattr)
        # docs/s per round, keyed by (pair, mechanism) and (pair, direction)
        self.rates: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self.seconds: dict[tuple[str, str], list[float]] = collections.defaultdict(list)
        self.notes: list[str] = []
        self.serial = 0

    def record(self, pair: str, mechanism: str, direction: str, seconds: float) -> None:
        n = self.args.docs
        self.rates[(pair, mechanism)].append(n / seconds)
        self.seconds[(pair, direction)].append(seconds)
        print(f"    {pair:13} {direction:14} {mechanism:15} {n / seconds:8,.0f} docs/s", flush=True)

    @staticmethod
    async def settle_rx(*peers: RxdbPeer) -> None:
        await asyncio.gather(*(p.call("awaitInSync", timeoutMs=60_000) for p in peers))

    def topic(self) -> str:
        self.serial += 1
        return f"bench-interop-{time.time_ns()}-{self.serial}"

    async def rxdb_pair(self, url: str) -> None:
        n, size, w = self.args.docs, self.args.size, self.args.warmup
        topic = self.topic()
        a, b = await asyncio.gather(
            RxdbPeer.start("A", url, topic, DEFAULT_SCHEMA),
            RxdbPeer.start("B", url, topic, DEFAULT_SCHEMA),
        )
        try:
            await asyncio.gather(
                a.call("waitPeers", count=1, timeoutMs=30_000),
                b.call("waitPeers", count=1, timeoutMs=30_000),
            )
            a_master = is_master(a.storage_token, b.storage_token)
            if w:  # warm both processes' JIT up, both ways
                await rx_to_rx(a, make_docs("wa", w, size), b, w)
                await rx_to_rx(b, make_docs("wb", w, size), a, 2 * w)
                await self.settle_rx(a, b)
            seconds = await rx_to_rx(a, make_docs("a", n, size), b, 2 * w + n)
            self.record("RxDB<->RxDB", MECHANISMS[not a_master], "A -> B", seconds)
            await self.settle_rx(a, b)
            seconds = await rx_to_rx(b, make_docs("b", n, size), a, 2 * w + 2 * n)
            self.record("RxDB<->RxDB", MECHANISMS[a_master], "B -> A", seconds)
        finally:
            await asyncio.gather(a.quit(), b.quit())

    async def p2pdb_pair(self, url: str, p2pdb_master: bool) -> None:
        n, size, w = self.args.docs, self.args.size, self.args.warmup
        pair = "p2pdb-master" if p2pdb_master else "p2pdb-fork"
        topic = self.topic()
        rx = await RxdbPeer.start("R", url, topic, DEFAULT_SCHEMA)
        py = await P2pdbPeer.open(
            self.tmp,
            f"{pair}-{self.serial}",
            DEFAULT_SCHEMA,
            master_against=rx.storage_token,
            want_master=p2pdb_master,
        )
        try:
            await py.replicate(url, topic, batch_size=self.args.p2pdb_batch)
            await py.wait_peers(1, within=30)
            await rx.call("waitPeers", count=1, timeoutMs=30_000)
            if w:  # warm the RxDB process's JIT up, both ways
                await rx_to_py(rx, make_docs("wr", w, size), py)
                await py_to_rx(py, make_docs("wp", w, size), rx, 2 * w)
                await py.wait_in_sync(within=60)
                await self.settle_rx(rx)
            received = 0
            if self.args.direction in ("both", "to-p2pdb"):
                mark = len(self.wire.entries)
                seconds = await rx_to_py(rx, make_docs("r", n, size), py)
                received = n
                self.record(pair, MECHANISMS[p2pdb_master], "RxDB -> p2pdb", seconds)
                print(f"      wire: {wire_counts(self.wire, mark)}", flush=True)
                await py.wait_in_sync(within=60)
                await rx.call("awaitInSync", timeoutMs=60_000)
            if self.args.direction in ("both", "to-rxdb"):
                mark = len(self.wire.entries)
                total = 2 * w + received + n
                seconds = await py_to_rx(py, make_docs("p", n, size), rx, total)
                self.record(pair, MECHANISMS[not p2pdb_master], "p2pdb -> RxDB", seconds)
                print(f"      wire: {wire_counts(self.wire, mark)}", flush=True)
            if py.errors or rx.errors():
                self.notes.append(f"{pair}: errors {py.errors[:2]} {rx.errors()[:2]}")
        finally:
            await py.close()
            await rx.quit()

    async def run(self) -> bool:
        only = set(self.args.only.split(",")) if self.args.only else None
        server = await start_signaling_server(host="127.0.0.1", port=0)
        async with server:
            for round_ in range(self.args.rounds):
                print(f"  round {round_ + 1}/{self.args.rounds}", flush=True)
                if only is None or "rxdb" in only:
                    await self.rxdb_pair(server.url)
                for master in (True, False):
                    name = "p2pdb-master" if master else "p2pdb-fork"
                    if only is None or name in only:
                        await self.p2pdb_pair(server.url, master)
        return self.report()

    def report(self) -> bool:
        rows: list[Row] = []
        base = {m: self.rates.get(("RxDB<->RxDB", m), []) for m in MECHANISMS}
        for pair, mechanism, direction in (
            ("p2pdb-fork", "master -> fork", "RxDB -> p2pdb"),
            ("p2pdb-master", "fork -> master", "RxDB -> p2pdb"),
            ("p2pdb-master", "master -> fork", "p2pdb -> RxDB"),
            ("p2pdb-fork", "fork -> master", "p2pdb -> RxDB"),
        ):
            row = Row(
                f"{direction}, {mechanism} ({pair})",
                "docs/s",
                f"RxDB {mechanism}",
                TARGET,
            )
            for i, value in enumerate(self.rates.get((pair, mechanism), [])):
                row.add(value, base[mechanism][i] if i < len(base[mechanism]) else None)
            rows.append(row)
        # each way, over both roles: total docs / total seconds, against the RxDB pair's both ways
        rx_both = [
            2 * self.args.docs / (a + b)
            for a, b in zip(
                self.seconds.get(("RxDB<->RxDB", "A -> B"), []),
                self.seconds.get(("RxDB<->RxDB", "B -> A"), []),
                strict=False,
            )
        ]
        for direction in ("RxDB -> p2pdb", "p2pdb -> RxDB"):
            row = Row(f"{direction}, both roles", "docs/s", "RxDB both mechanisms", TARGET)
            pairs = zip(
                self.seconds.get(("p2pdb-master", direction), []),
                self.seconds.get(("p2pdb-fork", direction), []),
                strict=False,
            )
            for i, (m, f) in enumerate(pairs):
                row.add(2 * self.args.docs / (m + f), rx_both[i] if i < len(rx_both) else None)
            rows.append(row)
        for mechanism in MECHANISMS:
            if base[mechanism]:
                self.notes.append(
                    f"RxDB<->RxDB {mechanism}: median {median(base[mechanism]):,.0f} docs/s"
                )
        title = (
            f"p2pdb <-> RxDB 17.6 over WebRTC (loopback): {self.args.docs:,} docs of "
            f"~{self.args.size} B each way\n  {machine_line()}"
        )
        return print_table(title, rows, self.args.rounds, self.notes)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--warmup", type=int, default=2000, help="untimed docs each way first, per pair"
    )
    parser.add_argument("--only", help="comma-separated: rxdb, p2pdb-master, p2pdb-fork")
    parser.add_argument(
        "--direction",
        choices=("both", "to-p2pdb", "to-rxdb"),
        default="both",
        help="p2pdb pairs: time only one direction (for profiling)",
    )
    parser.add_argument(
        "--p2pdb-batch", type=int, default=100, help="replicate_webrtc batch_size (default 100)"
    )
    parser.add_argument("--uvloop", action="store_true", help="run p2pdb on uvloop")
    parser.add_argument(
        "--prototype",
        default="",
        help="comma-separated sketches to apply first (not p2pdb code): " + ", ".join(PROTOTYPES),
    )
    args = parser.parse_args()
    for name in filter(None, args.prototype.split(",")):
        PROTOTYPES[name]()
        print(f"  PROTOTYPE APPLIED: {name}")
    bench = Bench(args)
    if args.uvloop:
        import uvloop

        met = uvloop.run(bench.run())
    else:
        met = asyncio.run(bench.run())
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
