"""benchmarks/bench_head_to_head.py works: a tiny run (one round, 200 documents each way)
starts every pair (RxDB <-> RxDB in Node, p2pdb <-> p2pdb, both mixed pairs), moves the
documents and prints every row of the report. Not a timing test: no figure is checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "interop"))

import bench_head_to_head as h2h  # noqa: E402
from rxdb_harness import node_executable  # noqa: E402

NUMBER = r"\d[\d,]*(\.\d+)?"
SPREAD = rf"{NUMBER} \[{NUMBER}-{NUMBER}\]"


def test_a_tiny_run_prints_every_pair_and_every_ratio() -> None:
    node_executable()  # fails (never skips) with what to do when Node or RxDB is missing
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_head_to_head.py"),
         "--rounds", "1", "--docs", "200", "--warmup", "0", "--round-timeout", "240"],
        capture_output=True, text=True, timeout=400, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    out = run.stdout
    assert "timed out" not in out, out
    assert re.search(r"load average \(1/5/15 min\) at start [\d. ]+, at end [\d. ]+", out), out
    for pair in h2h.PAIRS:
        for mechanism in (h2h.STREAM, h2h.PUSH):
            row = rf"{re.escape(pair)} +{mechanism} .*{SPREAD} +{SPREAD} / {SPREAD}"
            assert re.search(row, out), f"no {pair} {mechanism} row in:\n{out}"
    for label, _figure, _baseline in h2h.ratio_rows(200):
        assert re.search(rf"ratio {re.escape(label)} +{SPREAD}", out), f"no {label!r} in:\n{out}"


def test_spread_and_ratio_helpers() -> None:
    assert h2h.spread([]) == "-"
    assert h2h.spread([3.0, 1.0, 2.0]) == "2.00 [1.00-3.00]"
    r = h2h.Round(seconds={(h2h.RXDB, h2h.STREAM): 1.0, (h2h.RXDB, h2h.PUSH): 3.0})
    assert h2h.each_way(r, h2h.RXDB, 100) == 50.0
    assert h2h.each_way(r, h2h.P2PDB, 100) is None
    assert h2h.rate(r, h2h.RXDB, h2h.PUSH, 300) == 100.0
    assert h2h.mixed_direction(r, True, 100) is None
