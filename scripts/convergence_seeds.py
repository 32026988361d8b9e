"""Run the randomized convergence test (tests/test_replication_random.py) for many seeds.

    PYTHONPATH=$PWD python scripts/convergence_seeds.py --seeds 300 --steps 150 --jobs 2
    PYTHONPATH=$PWD python scripts/convergence_seeds.py --first 570 --seeds 1 --steps 600

Each seed runs in its own Python process (``--jobs`` at a time), in its own temporary folder,
killed after ``--timeout`` seconds. Every failure is printed with the command that reproduces
it in pytest; the exit status is 1 if any seed failed (a lost write, a divergence, a
resurrected delete, an exception or a timeout), else 0. The last line sums the run: seeds,
steps, acknowledged documents, writes and deletions, tolerated races, failures, seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
COUNTS = ("documents", "writes", "deleted", "tolerated")


def worker(seed: int, steps: int) -> int:
    """``--worker SEED``: run one seed here; print its counts as JSON (0) or fail (1)."""
    sys.path.insert(0, str(TESTS))
    from test_replication_random import run_seed

    try:
        with tempfile.TemporaryDirectory(prefix=f"p2pdb-seed{seed}-") as tmp:
            counts = asyncio.run(run_seed(Path(tmp), seed, steps))
    except BaseException:  # noqa: BLE001 - every failure is reported with its seed
        traceback.print_exc()
        return 1
    print(json.dumps(counts), flush=True)
    return 0


def run_one(seed: int, steps: int, timeout: float) -> tuple[int, dict[str, int] | None, str]:
    """One seed in a child process: its counts, or None and why it failed."""
    command = [sys.executable, __file__, "--worker", str(seed), "--steps", str(steps)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:  # subprocess.run killed the child
        return seed, None, f"timed out after {timeout:g} s"
    if done.returncode != 0:
        return seed, None, (done.stdout + done.stderr)[-4000:]
    counts: dict[str, int] = json.loads(done.stdout.strip().splitlines()[-1])
    return seed, counts, ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1000, help="how many seeds (1000)")
    parser.add_argument("--first", type=int, default=1, help="the first seed (1)")
    parser.add_argument("--steps", type=int, default=150, help="random steps per seed (150)")
    parser.add_argument("--jobs", type=int, default=2, help="seeds run at once (2)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per seed (300)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        return worker(args.worker, args.steps)
    if args.seeds < 1 or args.steps < 1 or args.jobs < 1 or args.timeout <= 0:
        parser.error("--seeds, --steps, --jobs and --timeout must be positive")

    totals = dict.fromkeys(COUNTS, 0)
    failures: list[int] = []
    started = time.monotonic()
    seeds = range(args.first, args.first + args.seeds)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = pool.map(lambda s: run_one(s, args.steps, args.timeout), seeds)
        for done_count, (seed, counts, error) in enumerate(results, 1):
            if counts is None:
                failures.append(seed)
                print(
                    f"FAILED seed {seed}: reproduce with P2PDB_SEED={seed} P2PDB_STEPS="
                    f"{args.steps} python -m pytest tests/test_replication_random.py -k "
                    f"converge\n{error}",
                    flush=True,
                )
            else:
                for key in COUNTS:
                    totals[key] += counts[key]
            if done_count % 50 == 0:
                print(f"... {done_count}/{args.seeds} seeds, {len(failures)} failed", flush=True)
    summary: dict[str, Any] = {
        "seeds": args.seeds,
        "first": args.first,
        "steps": args.steps,
        **totals,
        "failures": len(failures),
        "seconds": round(time.monotonic() - started),
    }
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    if failures:
        print("failed seeds:", " ".join(map(str, failures)))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
