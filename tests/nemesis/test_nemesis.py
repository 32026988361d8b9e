"""The nemesis in CI: one short seeded round of ``scripts/nemesis.py``.

A signaling server and two peer processes replicate over real WebRTC in a private network
namespace while every kind of fault is injected (peer SIGKILL and restart, peer SIGSTOP,
signaling SIGKILL and restart, signaling SIGSTOP, loopback down); then everything heals and
the checker compares every peer's file with every peer's write log. The long run is the same
script with ``--rounds`` (docs/reliability.md).

Two peers, with the default conflict handler: every fault kind ran, every peer converged
to identical, intact files holding only written states, and no acknowledged write was
rolled back (``lost``, ``resurrected``). Between two peers the nemesis used to find one
now and then: a push the master stored whose answer the fork never got (the fork killed,
the link down) came back as a conflict and ``master_wins`` undid the fork's newer writes;
reduced in tests/test_rollback_regression.py and fixed (docs/reliability.md). Topics of
three or more peers with ``master_wins`` still roll back (``test_mesh_rollback.py``, an
expected failure), so they are the long run's job.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from system_packages import find_or_install

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "nemesis.py"
KINDS = ("peer_kill", "peer_stop", "signaling_kill", "signaling_stop", "loopback_down")

pytestmark = pytest.mark.slow


@pytest.mark.timeout(240)
def test_a_short_nemesis_round_loses_nothing_and_converges(tmp_path: Path) -> None:
    ip, why = find_or_install("ip", "iproute2", "the nemesis needs `ip` (apt-get install iproute2)")
    if ip is None:
        pytest.fail(why, pytrace=False)
    summary_path = tmp_path / "summary.json"
    argv = [sys.executable, str(SCRIPT), "--rounds", "1", "--seconds", "20", "--peers", "2"]
    argv += ["--seed", "7", "--conflicts", "master_wins", "--dir", str(tmp_path / "rounds")]
    argv += ["--json", str(summary_path)]
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=220, env=env)
    if done.returncode == 3:  # no network namespace: a failure, never a skip (CI runs as root)
        pytest.fail(done.stderr.strip().splitlines()[-1], pytrace=False)
    print(done.stdout)
    assert summary_path.exists(), f"exit {done.returncode}: {done.stderr[-3000:]}"
    summary = orjson.loads(summary_path.read_bytes())
    assert summary["rounds"] == 1
    assert all(summary["faults_by_kind"][kind] >= 1 for kind in KINDS), summary
    assert summary["acknowledged"] > 200, summary
    # every peer ends identical, intact, holding every acknowledged write and nothing else
    problems = {k: summary[k] for k in ("lost", "resurrected", "unexpected", "divergent")}
    assert problems == dict.fromkeys(problems, 0), (problems, summary["examples"])
    assert summary["corrupt"] == 0, summary["examples"]
    assert summary["not_converged"] == 0, summary
    assert summary["convergence_max"] < 60, summary
    assert done.returncode == 0, done.stderr[-3000:]
