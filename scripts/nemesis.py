"""The long nemesis run: rounds of real peer processes over real WebRTC under faults.

    python scripts/nemesis.py --rounds 20 --seconds 45 --peers 4 --seed 1

Each round (tests/nemesis/nemesis_run.py) starts a signaling server and ``--peers`` peer
processes in a private network namespace (``unshare -n``; needs root), writes from every
peer while two nemesis workers SIGKILL/restart and SIGSTOP peers and the signaling server and
take loopback down, heals, waits until every peer holds the same documents, and checks that
every acknowledged write is on every peer and nothing removed came back
(tests/nemesis/nemesis_check.py). It prints one line per round and a summary, and exits 1
if any round lost, resurrected, diverged, corrupted or did not converge (3 if the network
namespace cannot be made). ``--json FILE`` also writes the summary as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "nemesis"))

from nemesis_peer import CONFLICTS  # noqa: E402
from nemesis_run import (  # noqa: E402
    KINDS,
    RoundResult,
    in_private_namespace,
    reexec_in_namespace,
    run_round,
)


def fault_kinds(text: str) -> tuple[str, ...]:
    """``--faults``: a comma-separated subset of the fault kinds, or ``none``."""
    kinds = tuple(k for k in text.split(",") if k and k != "none")
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown fault kinds {sorted(unknown)}; use {KINDS}")
    return kinds


def summary(results: list[RoundResult]) -> dict[str, Any]:
    """The totals over every round."""
    faults: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for r in results:
        faults.update(r.faults)
        errors.update(r.errors)
    times = [r.convergence for r in results if r.converged]
    checks = [r.check for r in results]
    return {
        "conflicts": results[0].conflicts if results else None,
        "rounds": len(results),
        "faults": sum(faults.values()),
        "faults_by_kind": {k: faults[k] for k in KINDS},
        "acknowledged": sum(c.acknowledged for c in checks),
        "in_flight": sum(c.in_flight for c in checks),
        "lost": sum(c.lost for c in checks),
        "resurrected": sum(c.resurrected for c in checks),
        "unexpected": sum(c.unexpected for c in checks),
        "divergent": sum(c.divergent for c in checks),
        "corrupt": sum(c.corrupt for c in checks),
        "not_converged": sum(1 for r in results if not r.converged),
        "convergence_median": statistics.median(times) if times else None,
        "convergence_max": max(times) if times else None,
        "failed_seeds": [r.seed for r in results if not r.ok],
        "pool_errors": dict(errors.most_common()),
        "examples": [e for r in results for e in r.check.examples][:20],
    }


async def run(args: argparse.Namespace, folder: Path) -> list[RoundResult]:
    results = []
    for index in range(args.rounds):
        seed = args.seed + index
        result = await run_round(
            seed,
            args.seconds,
            args.peers,
            folder / f"round-{seed}",
            conflicts=args.conflicts,
            kinds=args.faults,
        )
        results.append(result)
        print(f"round {index + 1}/{args.rounds} {result.line()}", flush=True)
        for example in result.check.examples:
            print(f"    {example}", flush=True)
        if not result.ok and not args.dir:  # keep the evidence of a failed round
            kept = Path(tempfile.gettempdir()) / f"p2pdb-nemesis-failed-{seed}"
            shutil.copytree(folder / f"round-{seed}", kept, dirs_exist_ok=True)
            print(f"    files kept in {kept}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=45.0, help="of faults per round")
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1, help="of the first round (+1 each)")
    parser.add_argument(
        "--conflicts",
        choices=CONFLICTS,
        default="master_wins",
        help="conflict handler: p2pdb's default, or last_write_wins on each writer's counter",
    )
    parser.add_argument(
        "--faults",
        type=fault_kinds,
        default=KINDS,
        help="comma-separated fault kinds (default: all; 'none' for a healthy network)",
    )
    parser.add_argument("--dir", help="keep the rounds' files here (default: a temp dir)")
    parser.add_argument("--json", help="write the summary to this file as JSON")
    raw = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(raw)
    if not in_private_namespace():
        return reexec_in_namespace([str(Path(__file__).resolve()), *raw])
    with tempfile.TemporaryDirectory(prefix="p2pdb-nemesis-") as temp:
        folder = Path(args.dir) if args.dir else Path(temp)
        results = asyncio.run(run(args, folder))
    total = summary(results)
    print("summary " + orjson.dumps({k: v for k, v in total.items() if k != "examples"}).decode())
    if args.json:
        Path(args.json).write_bytes(orjson.dumps(total, option=orjson.OPT_INDENT_2))
    return 1 if total["failed_seeds"] else 0


if __name__ == "__main__":
    sys.exit(main())
