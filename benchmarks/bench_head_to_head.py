"""Head to head: RxDB 17.6 <-> RxDB 17.6 in Node, p2pdb <-> p2pdb, and the two mixed, in one run.

    python benchmarks/bench_head_to_head.py [--docs 10000] [--size 1000] [--rounds 5]
                                            [--warmup 1000] [--engine aiortc|native]
                                            [--round-timeout 900] [--uvloop]

Every peer is its own OS process on 127.0.0.1: RxDB peers are ``tests/interop/
bench_h2h_peer.mjs`` (memory storage, ``replicateWebRTC`` over node-datachannel, RxDB's
default batch size 20), p2pdb peers are ``tests/webrtc/peer_process.py`` (a SQLite file,
``replicate_webrtc`` with ``batch_size`` 100), started through this script's
``--p2pdb-child`` mode so that ``--engine`` reaches them. This process runs p2pdb's signaling
server and only relays commands. Every peer generates the same documents itself
(``{"id", "text": "x" * (size - 40), "n"}``, about ``--size`` bytes of JSON), so no document
crosses a pipe inside a timed transfer.

Per round, four pairs, each on a fresh topic and fresh databases: RxDB <-> RxDB, p2pdb <->
p2pdb, p2pdb (master) with RxDB (fork), p2pdb (fork) with RxDB (master); roles come from the
master election (RxDB's rule, on the two storage tokens), a p2pdb database file is created
until its token gives the wanted role. Each pair first moves ``--warmup`` documents each way,
untimed (a fresh Node process's JIT is cold; at most ``--docs``), then ``--docs`` documents
each way, timed from the bulk insert on one side until the other side holds them all. Which
mechanism moves them depends on the sender's role:

* **stream**: the sender is the master; its live inserts go out as ``masterChangeStream$``
  events that the fork applies;
* **push**: the sender is the fork; it pushes ``masterWrite`` batches to the master.

CPU seconds per side are user + system time of each process (all its threads, from
/proc/<pid>/stat) from just before the insert until both sides are in sync again (at most
``--settle-timeout``; a p2pdb master paired with an RxDB fork is not waited for, the fork is: see
``HeadToHead.settle``). Ratios are
computed per round against the RxDB <-> RxDB pair of the same round, and printed as median
[min-max] over the rounds, with the load average at the start and the end. The last three
compare documents per CPU-second of both processes, which a loaded machine disturbs much less
than the wall clock.

Every pool error a peer reported (a dropped link, a limit) is printed as a note at the end:
a transfer that reconnected on the way is not a fair figure.
``H2H_NODE_CPU_PROF=<folder>`` runs the RxDB peers under ``node --cpu-prof`` (a
``.cpuprofile`` per process in that folder, for Chrome's DevTools or a script).

``--p2pdb-code DIR``: the p2pdb peers run the code of another checkout (``DIR``'s
``p2pdb`` and its copy of this script, e.g. ``git archive <commit> | tar -x -C DIR``), so
that alternate runs compare two commits; the RxDB peers and this process stay as they are.

``--engine``: the WebRTC engine of the p2pdb peers. If ``aiortc_connection_handler`` takes an
``engine=`` argument it is passed there; either way the children get ``P2PDB_WEBRTC_ENGINE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import inspect
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for _extra in (ROOT / "tests" / "interop", ROOT / "tests" / "webrtc", ROOT):
    if str(_extra) not in sys.path:
        sys.path.insert(0, str(_extra))

import p2pdb  # noqa: E402

RXDB, P2PDB = "RxDB<->RxDB", "p2pdb<->p2pdb"
P2PDB_MASTER, P2PDB_FORK = "p2pdb master + RxDB fork", "p2pdb fork + RxDB master"
PAIRS = (RXDB, P2PDB, P2PDB_MASTER, P2PDB_FORK)
STREAM, PUSH = "stream", "push"
PAIR_NAMES = {"rxdb": RXDB, "p2pdb": P2PDB, "p2pdb-master": P2PDB_MASTER, "p2pdb-fork": P2PDB_FORK}
ENGINE_ENV = "P2PDB_WEBRTC_ENGINE"
#: A folder: the RxDB peers run under ``node --cpu-prof`` and write their profiles there.
NODE_PROFILE_ENV = "H2H_NODE_CPU_PROF"


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (every thread) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def chosen_pairs(spec: str) -> tuple[str, ...]:
    """The pairs ``--pairs`` names, in the usual order (``all``: every pair)."""
    if spec == "all":
        return PAIRS
    names = {name.strip() for name in spec.split(",")}
    unknown = names - PAIR_NAMES.keys()
    if unknown:
        raise SystemExit(f"--pairs: unknown {sorted(unknown)}; choose from {sorted(PAIR_NAMES)}")
    return tuple(pair for name, pair in PAIR_NAMES.items() if name in names)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# -- the two kinds of peer processes --------------------------------------------------------


class RxSide:
    """An RxDB peer process (``bench_h2h_peer.mjs``)."""

    kind = "RxDB"

    def __init__(self, child: Any, token: str) -> None:
        self.child, self.token, self.pid = child, token, child.pid
        self.is_master = False  # set once the pair is connected

    @classmethod
    async def start(cls, url: str, topic: str, schema: dict[str, Any]) -> RxSide:
        import json

        from rxdb_harness import NodeChild

        profile = os.environ.get(NODE_PROFILE_ENV)
        child = await NodeChild.spawn(
            "rxdb",
            "bench_h2h_peer.mjs",
            json.dumps({"signalingUrl": url, "topic": topic, "schema": schema}),
            node_args=("--cpu-prof", f"--cpu-prof-dir={profile}") if profile else (),
        )
        try:
            ready = await child.wait_event(lambda e: e["event"] == "ready", within=60)
        except BaseException:
            await child.kill()
            raise
        return cls(child, str(ready["storageToken"]))

    async def connected(self, within: float) -> None:
        await self.child.call("waitPeers", count=1, timeoutMs=within * 1000, within=within)

    async def insert(self, prefix: str, count: int, size: int, within: float) -> None:
        await self.child.call(
            "insertGenerated", prefix=prefix, count=count, size=size, within=within
        )

    async def wait_count(self, count: int, within: float) -> None:
        await self.child.call("waitCount", count=count, timeoutMs=within * 1000, within=within)

    async def settle(self, within: float) -> None:
        await self.child.call("awaitInSync", timeoutMs=within * 1000, within=within)

    def errors(self) -> list[str]:
        """The pool errors this peer reported (``error`` events), for the notes."""
        return [
            " ".join(str(e.get("message")).split())[:200]
            for e in self.child.events
            if e["event"] == "error"
        ]

    async def quit(self) -> None:
        if self.child.running:
            with contextlib.suppress(Exception):
                await self.child.call("quit", within=10)
        await self.child.stop()


class PySide:
    """A p2pdb peer process (``peer_process.py`` through ``--p2pdb-child``)."""

    kind = "p2pdb"

    def __init__(self, child: Any, token: str) -> None:
        self.child, self.token, self.pid = child, token, child.pid
        self.is_master = False  # set once the pair is connected

    @classmethod
    async def start(cls, path: Path, url: str, topic: str, args: argparse.Namespace) -> PySide:
        from peer_process import ChildPeer

        extra = ["--uvloop"] if args.uvloop else []
        code = Path(args.p2pdb_code) if args.p2pdb_code else ROOT  # made absolute in main
        script = code / "benchmarks" / Path(__file__).name
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(code)}
        if args.engine:
            env[ENGINE_ENV] = args.engine
        log_path = path.with_suffix(".log")
        with log_path.open("ab") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable, script, "--p2pdb-child", args.engine or "",
                "--db", str(path), "--signaling", url, "--topic", topic, *extra,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=log,
                env=env, limit=2**24,
            )  # fmt: skip
        child = ChildPeer(process, log_path)
        try:
            ready = await child.expect("ready", within=60)
        except BaseException:
            await child.kill()
            raise
        return cls(child, str(ready["token"]))

    async def connected(self, within: float) -> None:
        await self.child.expect("first_sync", within=within)

    async def insert(self, prefix: str, count: int, size: int, within: float) -> None:
        await self.child.request(
            "insert", "inserted", prefix=prefix, count=count, size=size, within=within
        )

    async def wait_count(self, count: int, within: float) -> None:
        event = await self.child.request(
            "wait_count", "reached", count=count, timeout=within, within=within + 5
        )
        assert event["count"] >= count

    async def settle(self, within: float) -> None:
        await self.child.request("in_sync", "in_sync", timeout=within, within=within + 5)

    def errors(self) -> list[str]:
        """The pool errors this peer reported (``error`` events), for the notes."""
        return [
            f"{e.get('code')}: {str(e.get('message'))[:200]}"
            for e in self.child.events
            if e["event"] == "error"
        ]

    async def quit(self) -> None:
        await self.child.quit()


Side = RxSide | PySide


async def p2pdb_file(folder: Path, name: str, against: str | None, master: bool) -> Path:
    """A fresh database file; with ``against`` (the other side's token), one whose token makes
    it the master (or the fork) of the pair."""
    from p2pdb.plugins.replication_webrtc import is_master

    for attempt in range(64):
        path = folder / f"{name}-{attempt}.db"
        async with p2pdb.create_database(str(path)) as db:
            token = db.token
        if against is None or is_master(token, against) == master:
            return path
    raise RuntimeError("no database token gave the wanted role in 64 tries")


# -- the run --------------------------------------------------------------------------------


@dataclass
class Round:
    """One round's figures: seconds and CPU per (pair, mechanism)."""

    seconds: dict[tuple[str, str], float] = field(default_factory=dict)
    cpu: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    senders: dict[tuple[str, str], str] = field(default_factory=dict)


class HeadToHead:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rounds: list[Round] = []
        self.notes: list[str] = []
        self.inserted = 0.0  # seconds the last transfer's bulk insert took on the sender
        self.serial = 0

    def topic(self) -> str:
        self.serial += 1
        return f"bench-h2h-{time.time_ns()}-{self.serial}"

    async def start_pair(self, pair: str, url: str, folder: Path) -> tuple[Side, Side]:
        from peer_process import DOCS_SCHEMA

        topic, args = self.topic(), self.args
        if pair == RXDB:
            a, b = await asyncio.gather(
                RxSide.start(url, topic, DOCS_SCHEMA), RxSide.start(url, topic, DOCS_SCHEMA)
            )
            return a, b
        if pair == P2PDB:
            paths = [await p2pdb_file(folder, f"pp{self.serial}{x}", None, True) for x in "ab"]
            a2, b2 = await asyncio.gather(*(PySide.start(p, url, topic, args) for p in paths))
            return a2, b2
        rx = await RxSide.start(url, topic, DOCS_SCHEMA)
        try:
            path = await p2pdb_file(folder, f"px{self.serial}", rx.token, pair == P2PDB_MASTER)
            py = await PySide.start(path, url, topic, args)
        except BaseException:
            await rx.quit()
            raise
        return py, rx

    async def transfer(
        self, sender: Side, receiver: Side, prefix: str, count: int, total: int
    ) -> tuple[float, float, float]:
        """Seconds until ``receiver`` holds ``total`` documents after ``sender`` inserted
        ``count``, and the CPU seconds of both until they are in sync again (or until
        ``--settle-timeout``, noted)."""
        within = self.args.transfer_timeout
        cpu0 = cpu_seconds(sender.pid), cpu_seconds(receiver.pid)
        arrived = asyncio.ensure_future(receiver.wait_count(total, within))
        try:
            started = time.perf_counter()
            await sender.insert(prefix, count, self.args.size, within)
            self.inserted = time.perf_counter() - started
            await arrived
            seconds = time.perf_counter() - started
        finally:
            if not arrived.done():
                arrived.cancel()
                with contextlib.suppress(BaseException):
                    await arrived
        await self.settle(sender, receiver)
        return seconds, cpu_seconds(sender.pid) - cpu0[0], cpu_seconds(receiver.pid) - cpu0[1]

    async def settle(self, *sides: Side) -> None:
        """Wait until the pair is in sync. A p2pdb master of an RxDB fork is left out: its
        ``wait_for_in_sync`` sends the fork a ``RESYNC`` and waits for its next pull, which
        RxDB 17.6 was seen not to send after a push (the RxDB fork's own wait covers it)."""
        within = self.args.settle_timeout
        pair_has_rxdb = any(side.kind == "RxDB" for side in sides)
        waiting = [
            side.settle(within)
            for side in sides
            if not (pair_has_rxdb and side.kind == "p2pdb" and side.is_master)
        ]
        try:
            await asyncio.gather(*waiting)
        except (TimeoutError, AssertionError, RuntimeError) as exc:
            self.notes.append(f"not in sync within {within} s after a transfer: {exc!r:.200}")

    async def run_pair(self, pair: str, url: str, folder: Path, results: Round) -> None:
        from rxdb_harness import is_master

        n, w = self.args.docs, min(self.args.warmup, self.args.docs)
        a, b = await self.start_pair(pair, url, folder)
        try:
            await asyncio.gather(a.connected(60), b.connected(60))
            a_master = is_master(a.token, b.token)
            a.is_master, b.is_master = a_master, not a_master
            total = 0
            for sender, receiver, tag in ((a, b, "wa"), (b, a, "wb")):
                if w:
                    total += w
                    await self.transfer(sender, receiver, f"{tag}-", w, total)
            for sender, receiver, tag in ((a, b, "a"), (b, a, "b")):
                total += n
                seconds, cpu_s, cpu_r = await self.transfer(sender, receiver, f"{tag}-", n, total)
                mechanism = STREAM if (sender is a) == a_master else PUSH
                key = (pair, mechanism)
                results.seconds[key] = seconds
                results.cpu[key] = (cpu_s, cpu_r)
                results.senders[key] = f"{sender.kind} -> {receiver.kind}"
                print(
                    f"    {pair:25} {sender.kind:>5} -> {receiver.kind:5} {mechanism:6} "
                    f"{n / seconds:8,.0f} docs/s  CPU {cpu_s:5.2f} s sender, "
                    f"{cpu_r:5.2f} s receiver (insert {self.inserted:.2f} s)",
                    flush=True,
                )
        finally:
            # errors up to here (leaving reports the other side gone, which is no news)
            for side in (a, b):
                self.notes.extend(f"{pair}: {side.kind} peer: {e}" for e in side.errors())
            await asyncio.gather(a.quit(), b.quit())

    async def run(self) -> None:
        from p2pdb.plugins.replication_webrtc import start_signaling_server

        self.load_start = load()
        server = await start_signaling_server(host="127.0.0.1", port=0)
        async with server:
            for number in range(self.args.rounds):
                print(f"  round {number + 1}/{self.args.rounds} (load {load()})", flush=True)
                results = Round()
                with tempfile.TemporaryDirectory(prefix="p2pdb-bench-h2h-") as folder:
                    try:
                        async with asyncio.timeout(self.args.round_timeout):
                            for pair in chosen_pairs(self.args.pairs):
                                try:
                                    await self.run_pair(pair, server.url, Path(folder), results)
                                except (AssertionError, RuntimeError, OSError) as exc:
                                    self.notes.append(
                                        f"round {number + 1}, {pair}: failed ({exc!r:.300})"
                                    )
                    except TimeoutError:
                        self.notes.append(
                            f"round {number + 1} timed out after {self.args.round_timeout} s; "
                            "its finished transfers are kept"
                        )
                self.rounds.append(results)
        self.load_end = load()


# -- the report -----------------------------------------------------------------------------


def spread(values: list[float], fmt: str = "{:.2f}") -> str:
    """``median [min-max]`` of ``values``."""
    if not values:
        return "-"
    middle = fmt.format(statistics.median(values))
    return f"{middle} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def each_way(r: Round, pair: str, n: int) -> float | None:
    """Documents per second over both mechanisms of ``pair`` (2n / both transfers' time)."""
    s, p = r.seconds.get((pair, STREAM)), r.seconds.get((pair, PUSH))
    return 2 * n / (s + p) if s and p else None


def rate(r: Round, pair: str, mechanism: str, n: int) -> float | None:
    seconds = r.seconds.get((pair, mechanism))
    return n / seconds if seconds else None


def mixed_direction(r: Round, to_rxdb: bool, n: int) -> float | None:
    """p2pdb -> RxDB (or RxDB -> p2pdb) over both roles: the p2pdb master's stream and the
    p2pdb fork's push (or the RxDB fork's push to the p2pdb master and the RxDB master's
    stream to the p2pdb fork), 2n / both transfers' time."""
    if to_rxdb:
        s, p = r.seconds.get((P2PDB_MASTER, STREAM)), r.seconds.get((P2PDB_FORK, PUSH))
    else:
        s, p = r.seconds.get((P2PDB_FORK, STREAM)), r.seconds.get((P2PDB_MASTER, PUSH))
    return 2 * n / (s + p) if s and p else None


def cpu_per_doc(r: Round, keys: tuple[tuple[str, str], ...], n: int) -> float | None:
    """Documents per CPU-second of both sides over the transfers ``keys``."""
    if not all(k in r.cpu for k in keys):
        return None
    return len(keys) * n / sum(sum(r.cpu[k]) for k in keys)


RX_KEYS = ((RXDB, STREAM), (RXDB, PUSH))
PY_KEYS = ((P2PDB, STREAM), (P2PDB, PUSH))
TO_RX_KEYS = ((P2PDB_MASTER, STREAM), (P2PDB_FORK, PUSH))
FROM_RX_KEYS = ((P2PDB_FORK, STREAM), (P2PDB_MASTER, PUSH))


#: The ratio rows: (label, figure of a round, baseline of the same round).
def ratio_rows(n: int) -> list[tuple[str, Any, Any]]:
    base_each = functools.partial(each_way, pair=RXDB, n=n)
    return [
        ("p2pdb<->p2pdb / RxDB<->RxDB, each way",
         functools.partial(each_way, pair=P2PDB, n=n), base_each),
        ("p2pdb<->p2pdb / RxDB<->RxDB, stream",
         functools.partial(rate, pair=P2PDB, mechanism=STREAM, n=n),
         functools.partial(rate, pair=RXDB, mechanism=STREAM, n=n)),
        ("p2pdb<->p2pdb / RxDB<->RxDB, push",
         functools.partial(rate, pair=P2PDB, mechanism=PUSH, n=n),
         functools.partial(rate, pair=RXDB, mechanism=PUSH, n=n)),
        ("p2pdb->RxDB / RxDB<->RxDB, both roles",
         functools.partial(mixed_direction, to_rxdb=True, n=n), base_each),
        ("RxDB->p2pdb / RxDB<->RxDB, both roles",
         functools.partial(mixed_direction, to_rxdb=False, n=n), base_each),
        ("p2pdb master streaming to RxDB / RxDB stream",
         functools.partial(rate, pair=P2PDB_MASTER, mechanism=STREAM, n=n),
         functools.partial(rate, pair=RXDB, mechanism=STREAM, n=n)),
        ("p2pdb fork pushing to RxDB / RxDB push",
         functools.partial(rate, pair=P2PDB_FORK, mechanism=PUSH, n=n),
         functools.partial(rate, pair=RXDB, mechanism=PUSH, n=n)),
        ("RxDB master streaming to p2pdb / RxDB stream",
         functools.partial(rate, pair=P2PDB_FORK, mechanism=STREAM, n=n),
         functools.partial(rate, pair=RXDB, mechanism=STREAM, n=n)),
        ("RxDB fork pushing to p2pdb / RxDB push",
         functools.partial(rate, pair=P2PDB_MASTER, mechanism=PUSH, n=n),
         functools.partial(rate, pair=RXDB, mechanism=PUSH, n=n)),
        # docs per CPU-second of both processes (less sensitive to the load than wall time)
        ("docs per CPU-s: p2pdb<->p2pdb / RxDB<->RxDB",
         functools.partial(cpu_per_doc, keys=PY_KEYS, n=n),
         functools.partial(cpu_per_doc, keys=RX_KEYS, n=n)),
        ("docs per CPU-s: p2pdb->RxDB / RxDB<->RxDB",
         functools.partial(cpu_per_doc, keys=TO_RX_KEYS, n=n),
         functools.partial(cpu_per_doc, keys=RX_KEYS, n=n)),
        ("docs per CPU-s: RxDB->p2pdb / RxDB<->RxDB",
         functools.partial(cpu_per_doc, keys=FROM_RX_KEYS, n=n),
         functools.partial(cpu_per_doc, keys=RX_KEYS, n=n)),
    ]  # fmt: skip


def takes_engine() -> bool:
    """Whether ``aiortc_connection_handler`` has an ``engine=`` argument."""
    from p2pdb.plugins.replication_webrtc import aiortc_connection_handler

    return "engine" in inspect.signature(aiortc_connection_handler).parameters


def engine_note(engine: str) -> str:
    if not engine:
        return "default"
    if takes_engine():
        return f"{engine} (engine= of the connection handler)"
    return f"{engine} (only as {ENGINE_ENV}: the connection handler takes no engine= yet)"


def report(bench: HeadToHead) -> None:
    args, rounds = bench.args, bench.rounds
    n = args.docs
    print(
        f"\nHead to head over WebRTC (loopback): {n:,} docs of ~{args.size} B each way, "
        f"{len(rounds)} round(s), median [min-max]; p2pdb engine: {engine_note(args.engine)}"
    )
    print(f"  load average (1/5/15 min) at start {bench.load_start}, at end {bench.load_end}")
    if args.p2pdb_code:
        print(f"  p2pdb peers run the code in {args.p2pdb_code}")
    head = f"{'pair':25} {'mechanism':9} {'direction':15} {'docs/s':>22}"
    print(f"\n  {head}  CPU s sender / receiver")
    for pair in PAIRS:
        for mechanism in (STREAM, PUSH):
            key = (pair, mechanism)
            rates = [n / r.seconds[key] for r in rounds if key in r.seconds]
            sender = [r.cpu[key][0] for r in rounds if key in r.cpu]
            receiver = [r.cpu[key][1] for r in rounds if key in r.cpu]
            direction = next((r.senders[key] for r in rounds if key in r.senders), "-")
            print(
                f"  {pair:25} {mechanism:9} {direction:15} {spread(rates, '{:,.0f}'):>22}  "
                f"{spread(sender)} / {spread(receiver)}"
            )
    print(f"\n  {'ratio':54} median [min-max]")
    for label, figure, baseline in ratio_rows(n):
        ratios = []
        for r in rounds:
            value, base = figure(r), baseline(r)
            if value and base:
                ratios.append(value / base)
        print(f"  ratio {label:48} {spread(ratios)}")
    for note in bench.notes:
        print(f"  * {note}")


# -- entry points ---------------------------------------------------------------------------


def p2pdb_child(engine: str, argv: list[str]) -> None:
    """Run ``peer_process.py``'s child with ``engine`` given to the connection handler when
    it takes one (the environment variable is set by the parent either way)."""
    import peer_process

    from p2pdb.plugins import replication_webrtc

    factory = replication_webrtc.aiortc_connection_handler
    if engine and takes_engine():
        replication_webrtc.aiortc_connection_handler = functools.partial(  # type: ignore[assignment]
            factory, engine=engine
        )
    peer_process.main(argv)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--warmup", type=int, default=1000, help="untimed docs each way, per pair (<= --docs)"
    )
    parser.add_argument("--engine", choices=("aiortc", "native"), default="")
    parser.add_argument("--uvloop", action="store_true", help="run the p2pdb peers on uvloop")
    parser.add_argument("--round-timeout", type=float, default=900.0)
    parser.add_argument("--transfer-timeout", type=float, default=300.0)
    parser.add_argument("--settle-timeout", type=float, default=60.0)
    parser.add_argument(
        "--pairs",
        default="all",
        help="comma-separated subset of rxdb,p2pdb,p2pdb-master,p2pdb-fork (default: all)",
    )
    parser.add_argument(
        "--p2pdb-code",
        default="",
        help="a p2pdb checkout whose code the p2pdb peers run (default: this one), for A/B runs",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--p2pdb-child"]:
        p2pdb_child(argv[1], argv[2:])
        return 0
    args = parse_args(argv)
    if args.p2pdb_code:
        args.p2pdb_code = str(Path(args.p2pdb_code).resolve())
    bench = HeadToHead(args)
    asyncio.run(bench.run())
    report(bench)
    return 0


if __name__ == "__main__":
    sys.exit(main())
