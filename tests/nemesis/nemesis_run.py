"""A nemesis round: a signaling server and N peer processes replicating over real WebRTC
in a private network namespace, faults injected on a seeded random schedule, then healing,
convergence and the checker (``nemesis_check.py``).

The faults (two nemesis workers, each holding one fault at a time on a target the other is
not faulting):

* ``peer_kill``: SIGKILL a peer, restart it on the same file 0.2-3 s later (it resumes
  writing);
* ``peer_stop``: SIGSTOP a peer for 0.5-8 s, then SIGCONT;
* ``signaling_kill``: SIGKILL the signaling server, restart it on the same port 0.5-5 s
  later;
* ``signaling_stop``: SIGSTOP the signaling server for 0.5-8 s;
* ``loopback_down``: ``ip link set lo down`` in the namespace for 1-10 s (every WebRTC link
  and signaling socket loses its packets).

Healing ends every fault, restarts what is dead, stops the writers (after the write in
flight) and then polls every peer's digest until all are equal: the time from then on is
the convergence time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from nemesis_check import CheckResult, check
from nemesis_procs import Child, Peer, Signaling, die_with_parent

NETNS_ENV = "P2PDB_NEMESIS_NETNS"
KINDS = ("peer_kill", "peer_stop", "signaling_kill", "signaling_stop", "loopback_down")
SIGNALING_PORT = 47000


@dataclass
class RoundResult:
    """What one round did and found."""

    seed: int
    conflicts: str = "master_wins"
    faults: Counter[str] = field(default_factory=Counter)
    check: CheckResult = field(default_factory=CheckResult)
    converged: bool = False
    convergence: float = 0.0  # seconds from the writers' stop to equal digests
    wall: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)  # pool error codes, all peers

    @property
    def ok(self) -> bool:
        """Converged and the checker found nothing."""
        return self.converged and self.check.ok

    def line(self) -> str:
        """One line for the round's log."""
        c = self.check
        faults = " ".join(f"{k}={self.faults[k]}" for k in KINDS)
        return (
            f"seed={self.seed} faults={sum(self.faults.values())} ({faults}) "
            f"acked={c.acknowledged} in_flight={c.in_flight} docs={c.documents} "
            f"lost={c.lost} resurrected={c.resurrected} unexpected={c.unexpected} "
            f"divergent={c.divergent} corrupt={c.corrupt} converged={self.converged} "
            f"convergence={self.convergence:.1f}s wall={self.wall:.0f}s"
        )


def loopback(up: bool) -> None:
    """``ip link set lo up|down`` in this (private) network namespace."""
    subprocess.run(["ip", "link", "set", "lo", "up" if up else "down"], check=True)


def in_private_namespace() -> bool:
    """True inside the namespace that :func:`reexec_in_namespace` made."""
    return os.environ.get(NETNS_ENV) == "1"


def reexec_in_namespace(argv: list[str]) -> int:
    """Run ``python argv...`` in a new network namespace with loopback up; its exit status.

    Exit status 3 and one line on stderr if the namespace cannot be made (``unshare -n``
    needs root or CAP_SYS_ADMIN)."""
    unshare = shutil.which("unshare")
    ip = shutil.which("ip")
    if unshare is None or ip is None:
        print("nemesis: needs the unshare and ip commands (util-linux, iproute2)", file=sys.stderr)
        return 3
    probe = subprocess.run(
        [unshare, "-n", "--", ip, "link", "set", "lo", "up"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        reason = probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else "failed"
        print(f"nemesis: cannot make a network namespace (unshare -n): {reason}", file=sys.stderr)
        return 3
    command = [unshare, "-n", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh"]
    env = {**os.environ, NETNS_ENV: "1"}
    # the round dies with this process (and its peers with it): a killed run leaves nothing
    run = subprocess.run([*command, sys.executable, *argv], env=env, preexec_fn=die_with_parent)
    return run.returncode


class Nemesis:
    """Seeded fault workers over a round's processes."""

    def __init__(
        self, seed: int, peers: list[Peer], signaling: Signaling, kinds: tuple[str, ...] = KINDS
    ) -> None:
        self.seed = seed
        self.kinds = kinds
        self.peers = peers
        self.signaling = signaling
        self.faults: Counter[str] = Counter()
        self.busy: set[str] = set()  # targets under a fault: peer names, "signaling", "lo"
        self.healing = asyncio.Event()
        # every kind once first (in a seeded order), so even a short round tries them all
        self.first = list(kinds)
        random.Random(f"{seed}/nemesis/order").shuffle(self.first)

    async def hold(self, rng: random.Random, low: float, high: float) -> None:
        """Keep a fault for a random time, or until healing starts."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.healing.wait(), rng.uniform(low, high))

    async def worker(self, index: int) -> None:
        """Inject faults one after another until healing starts (own seeded schedule)."""
        rng = random.Random(f"{self.seed}/nemesis/{index}")
        while self.kinds and not self.healing.is_set():
            await self.hold(rng, 0.0, 1.0)
            if self.healing.is_set():
                return
            kind = self.first[0] if self.first else rng.choice(self.kinds)
            if kind.startswith("peer"):
                free = [p for p in self.peers if p.name not in self.busy]
                if not free:
                    continue
                target = rng.choice(free)
                name = target.name
            else:
                name = "lo" if kind == "loopback_down" else "signaling"
                if name in self.busy:
                    continue
            if kind in self.first:
                self.first.remove(kind)
            self.busy.add(name)
            self.faults[kind] += 1
            try:
                await self.inject(rng, kind, target if kind.startswith("peer") else None)
            finally:
                self.busy.discard(name)

    async def pause(self, child: Child, rng: random.Random) -> None:
        """SIGSTOP ``child`` for 0.5-8 s (or until healing), then SIGCONT."""
        child.signal(signal.SIGSTOP)
        try:
            await self.hold(rng, 0.5, 8.0)
        finally:
            child.signal(signal.SIGCONT)

    async def inject(self, rng: random.Random, kind: str, peer: Peer | None) -> None:
        if kind == "peer_kill":
            assert peer is not None
            await peer.running.kill()
            await self.hold(rng, 0.2, 3.0)
            await peer.start(write=True)
        elif kind == "peer_stop":
            assert peer is not None
            await self.pause(peer.running, rng)
        elif kind == "signaling_kill":
            assert self.signaling.child is not None
            await self.signaling.child.kill()
            await self.hold(rng, 0.5, 5.0)
            await self.signaling.start()
        elif kind == "signaling_stop":
            assert self.signaling.child is not None
            await self.pause(self.signaling.child, rng)
        else:
            loopback(False)
            try:
                await self.hold(rng, 1.0, 10.0)
            finally:
                loopback(True)


async def converge(peers: list[Peer], within: float) -> float | None:
    """Poll every peer's digest until all are equal (and every pool joined); the seconds it
    took, or ``None`` after ``within`` seconds."""
    started = time.monotonic()
    while time.monotonic() - started < within:
        digests = [await p.running.request("digest", "digest", within=within) for p in peers]
        if all(d["joined"] for d in digests) and len({d["hash"] for d in digests}) == 1:
            return time.monotonic() - started
        await asyncio.sleep(0.25)  # a poll interval, not a settle delay: the loop tests again
    return None


async def run_round(
    seed: int,
    seconds: float,
    peers: int,
    folder: Path,
    *,
    conflicts: str = "master_wins",
    kinds: tuple[str, ...] = KINDS,
    converge_within: float = 120.0,
) -> RoundResult:
    """One seeded round in ``folder`` (must run inside a private network namespace)."""
    assert in_private_namespace(), "run_round needs a private network namespace"
    began = time.monotonic()
    result = RoundResult(seed, conflicts)
    await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
    signaling = Signaling(SIGNALING_PORT, folder)
    nodes = [Peer(f"p{i}", folder, signaling.url, seed, conflicts) for i in range(peers)]
    try:
        await signaling.start()
        await asyncio.gather(*(p.start(write=True) for p in nodes))
        nemesis = Nemesis(seed, nodes, signaling, kinds)
        workers = [asyncio.create_task(nemesis.worker(i)) for i in range(2)]
        # the writers write for ``seconds`` (with no fault kinds: on a healthy network)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(nemesis.healing.wait(), seconds)
        nemesis.healing.set()  # every held fault ends now, and dead processes restart
        await asyncio.gather(*workers)
        result.faults = nemesis.faults
        for p in nodes:
            await p.running.request("stop", "stopped", within=60)
        took = await converge(nodes, converge_within)
        result.converged = took is not None
        result.convergence = took if took is not None else converge_within
    finally:
        for p in nodes:
            if p.child is not None:
                for event in p.child.events:
                    if event["event"] == "error":
                        result.errors[event["code"]] += 1
                await p.child.quit()
        if signaling.child is not None:
            await signaling.child.kill()  # it keeps nothing worth a graceful stop
        loopback(True)
    dbs = {p.name: p.db for p in nodes}
    result.check = await check(dbs, {p.name: p.log for p in nodes}, conflicts)
    result.wall = time.monotonic() - began
    return result
