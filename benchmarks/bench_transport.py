"""The transport levers, each on against all off, between two p2pdb processes over WebRTC.

    python benchmarks/bench_transport.py [--docs 10000] [--rounds 3]
                                         [--configs off,sack,zlib,uvloop,all]

Levers (issue #12): ``sack`` delayed SACKs in aiortc's SCTP (``sctp_sack.py``), ``zlib``
compressed frames between p2pdb peers (``compression.py``), ``uvloop`` the event loop
(``p2pdb/loop.py``; needs uvloop importable, e.g. ``pip install "p2pdb[fast]"``), ``all``
the three together; ``off`` is the baseline: none of them.

Every peer is its own process (this script with ``--child``): a SQLite file, one collection
of realistic ~1 KB documents (``_common.make_docs``: words, numbers, tags), and
``replicate_webrtc`` with the config's handler options, on 127.0.0.1 with this process's
signaling server. Per round and config, a fresh pair moves ``--docs`` documents each way:

* **stream**: a ``bulk_insert`` on the pair's master, which streams its change events;
* **push**: a ``bulk_insert`` on the fork, which pushes ``masterWrite`` batches;

timed from the insert until the other process holds them all (``time.monotonic()`` in the
children: one clock on Linux), with the CPU seconds of both processes over that time
(``time.process_time()``, every thread). Configs run one after the other inside each round,
so a round's ratios compare runs seconds apart on the same (shared, loaded) machine; the
table gives medians and [min-max] over rounds of docs/s, CPU seconds and the per-round
ratios against ``off`` (docs/s: config / off; CPU: off / config; above 1 is better).
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
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _child import JsonChild, emit  # noqa: E402
from _common import SCHEMA, machine_line, make_docs  # noqa: E402

TOPIC = "p2pdb-bench-transport"
WAIT = 600.0
#: name -> (delayed SACKs, compression, uvloop)
CONFIGS: dict[str, tuple[bool, bool, bool]] = {
    "off": (False, False, False),
    "sack": (True, False, False),
    "zlib": (False, True, False),
    "uvloop": (False, False, True),
    "all": (True, True, True),
}


# -- a peer process -------------------------------------------------------------------------


async def child(args: argparse.Namespace) -> None:
    import p2pdb
    from p2pdb.loop import loop_name
    from p2pdb.plugins.replication_webrtc import (
        aiortc_connection_handler,
        replicate_webrtc,
        sctp_sack,
    )

    loop = asyncio.get_running_loop()
    db = await p2pdb.create_database(args.db)
    docs = await db.add_collection("docs", schema=SCHEMA)
    held = {"count": await docs.count()}
    changed = asyncio.Event()

    def on_change(event: Any) -> None:
        if event.operation == "INSERT":
            held["count"] += 1
            changed.set()

    docs.changes.subscribe(on_change)
    handler = aiortc_connection_handler(
        args.signaling,
        ice_servers=[],
        host_addresses=["127.0.0.1"],
        compression=args.zlib,
        delayed_sack=args.sack,
    )
    pool = await replicate_webrtc(docs, TOPIC, handler)
    await pool.wait_for_first_peer()
    await pool.wait_for_in_sync()
    emit(event="ready", token=db.token, loop=loop_name())
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            command = orjson.loads(line)
            name = command["cmd"]
            if name == "insert":
                batch = make_docs(command["count"], seed=command["seed"], prefix=command["prefix"])
                t0, cpu0 = time.monotonic(), time.process_time()
                await docs.bulk_insert(batch)
                emit(event="inserted", t0=t0, cpu0=cpu0)
            elif name == "cpu":
                emit(event="cpu", cpu=time.process_time())
            elif name == "wait_count":
                async with asyncio.timeout(WAIT):
                    while held["count"] < command["count"]:
                        changed.clear()
                        await changed.wait()
                emit(event="reached", t=time.monotonic(), cpu=time.process_time())
            elif name == "in_sync":
                async with asyncio.timeout(WAIT):
                    await pool.wait_for_in_sync()
                emit(event="in_sync")
            elif name == "stats":
                links = [pool.connection.link_to(p) for p in pool.sessions]
                counts = [vars(link.compression.counts) for link in links if link is not None]
                emit(event="stats", zlib=counts, sack=vars(sctp_sack.counts()))
            elif name == "quit":
                break
    finally:
        await pool.cancel()
        await db.close()


class Child(JsonChild):
    """A peer process; ``ready`` is what it said once its pool was up."""

    ready: dict[str, Any]

    @classmethod
    async def peer(cls, db: Path, url: str, config: str) -> Child:
        sack, zlib_on, uvloop_on = CONFIGS[config]
        env = {**os.environ, "P2PDB_UVLOOP": "1" if uvloop_on else "0"}
        flags = (["--sack"] if sack else []) + (["--zlib"] if zlib_on else [])
        return await cls.start(
            __file__, "--child", "--db", str(db), "--signaling", url, *flags, env=env, within=WAIT
        )

    async def request(self, cmd: str, event: str, **fields: Any) -> dict[str, Any]:
        self.send(cmd=cmd, **fields)
        return await self.read(event=event)


# -- the parent -----------------------------------------------------------------------------


async def token_of(path: Path) -> str:
    import p2pdb

    async with p2pdb.create_database(str(path)) as db:
        await db.add_collection("docs", schema=SCHEMA)
        return db.token


async def transfer(
    writer: Child, reader: Child, count: int, total: int, seed: int, prefix: str
) -> tuple[float, float]:
    """Seconds and CPU seconds (both processes) for ``count`` documents writer -> reader."""
    reader_cpu0 = (await reader.request("cpu", "cpu"))["cpu"]
    inserted = await writer.request("insert", "inserted", count=count, seed=seed, prefix=prefix)
    reached = await reader.request("wait_count", "reached", count=total)
    writer_cpu1 = (await writer.request("cpu", "cpu"))["cpu"]
    cpu = (writer_cpu1 - inserted["cpu0"]) + (reached["cpu"] - reader_cpu0)
    await reader.request("in_sync", "in_sync")
    await writer.request("in_sync", "in_sync")
    return reached["t"] - inserted["t0"], cpu


async def one_pair(
    config: str, folder: Path, url: str, count: int, round_no: int
) -> dict[str, tuple[float, float]]:
    from p2pdb.plugins.replication_webrtc import is_master

    await asyncio.to_thread(folder.mkdir, parents=True)
    paths = [folder / "x.db", folder / "y.db"]
    tokens = [await token_of(p) for p in paths]
    master, fork = (paths[0], paths[1]) if is_master(tokens[0], tokens[1]) else (paths[1], paths[0])
    a = await Child.peer(master, url, config)
    b = await Child.peer(fork, url, config)
    try:
        a.ready, b.ready = await a.read(event="ready"), await b.read(event="ready")
        want_loop = "uvloop" if CONFIGS[config][2] else "asyncio"
        assert a.ready["loop"] == b.ready["loop"] == want_loop, (config, a.ready)
        seed = 1000 * round_no
        stream = await transfer(a, b, count, count, seed, "s")
        push = await transfer(b, a, count, 2 * count, seed + 1, "p")
        stats = await a.request("stats", "stats")
        check_levers(config, stats)
        print(f"# {config} master's counters: {stats}", flush=True)
    finally:
        await a.quit()
        await b.quit()
    return {"stream": stream, "push": push}


def check_levers(config: str, stats: dict[str, Any]) -> None:
    """The levers a config asks for did act (and the others did not)."""
    sack, zlib_on, _ = CONFIGS[config]
    zipped = sum(c["frames_sent"] + c["frames_received"] for c in stats["zlib"])
    assert (zipped > 0) == zlib_on, (config, stats)
    assert (stats["sack"]["packets"] > 0) == sack, (config, stats)


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


async def main(args: argparse.Namespace) -> None:
    from p2pdb.plugins.replication_webrtc import start_signaling_server

    configs = args.configs.split(",")
    if "off" not in configs:
        configs.insert(0, "off")
    uvloop_ok = __import__("importlib.util").util.find_spec("uvloop") is not None
    if not uvloop_ok:
        configs = [c for c in configs if not CONFIGS[c][2]]
        print("# uvloop is not importable: configs using it are left out", flush=True)
    print(f"# {machine_line()}", flush=True)
    print(f"# {args.docs} documents of ~1 KB each way, {args.rounds} rounds", flush=True)
    # results[config][scenario] = [(seconds, cpu), ...] one per round
    results: dict[str, dict[str, list[tuple[float, float]]]] = {
        c: {"stream": [], "push": []} for c in configs
    }
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-transport-"))
    server = await start_signaling_server(port=0)
    try:
        for round_no in range(args.rounds):
            for config in configs:
                folder = work / f"r{round_no}-{config}"
                out = await one_pair(config, folder, server.url, args.docs, round_no)
                for scenario, figure in out.items():
                    results[config][scenario].append(figure)
                print(
                    f"# round {round_no + 1} {config}: "
                    + ", ".join(
                        f"{s} {args.docs / t:.0f} docs/s, {cpu:.2f} CPU s"
                        for s, (t, cpu) in out.items()
                    ),
                    flush=True,
                )
    finally:
        await server.close()
    print(f"\n# load average after: {os.getloadavg()[0]:.2f}")
    head = (
        f"{'config':<8} {'scenario':<7} {'docs/s':>22} {'CPU s':>20} "
        f"{'docs/s vs off':>20} {'CPU off/config':>20}"
    )
    print(head)
    print("-" * len(head))
    for config in configs:
        for scenario in ("stream", "push"):
            runs = results[config][scenario]
            base = results["off"][scenario]
            rates = [args.docs / t for t, _ in runs]
            cpus = [cpu for _, cpu in runs]
            rate_ratio = [(b[0] / r[0]) for r, b in zip(runs, base, strict=True)]
            cpu_ratio = [(b[1] / r[1]) for r, b in zip(runs, base, strict=True)]
            print(
                f"{config:<8} {scenario:<7} {spread(rates):>22} {spread(cpus):>20} "
                f"{spread(rate_ratio):>20} {spread(cpu_ratio):>20}"
            )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default="off,sack,zlib,uvloop,all")
    parser.add_argument("--workdir", help="folder for the databases (kept)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--signaling", help=argparse.SUPPRESS)
    parser.add_argument("--sack", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--zlib", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.child:
        from p2pdb.loop import run

        run(child(arguments))
    else:
        os.environ.setdefault("PYTHONPATH", str(ROOT))
        asyncio.run(main(arguments))
