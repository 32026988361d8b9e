"""Disk full: a database on a small tmpfs, filled up mid-write and mid-replication.

Each case runs ``disk_full_child.py`` in a mount namespace of its own (``unshare -m``, as
root) with a 16 MB tmpfs that only the child sees, so nothing outside is filled. The child
fills the disk with a file, writes until SQLite reports ``SQLITE_FULL``, starts a
replication that fills it again mid-way, deletes the file, and checks everything after
reopening (see its docstring). 16 MB, not less: a WAL file grows up to SQLite's
auto-checkpoint (1,000 pages, 4 MB) beside the data before it is reused.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

CHILD = Path(__file__).with_name("disk_full_child.py")


def run_in_namespace(mount: Path, command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    script = f"mount -t tmpfs -o size=16m tmpfs {shlex.quote(str(mount))} && {command}"
    return subprocess.run(
        ["unshare", "-m", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def mount(tmp_path: Path) -> Path:
    folder = tmp_path / "small-disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs in a mount namespace (unshare -m)")
    try:
        probe = run_in_namespace(folder, "true", timeout=30)
    except FileNotFoundError:
        pytest.skip("unshare is not installed")
    if probe.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace here: {probe.stderr.strip()}")
    return folder


@pytest.mark.parametrize("mode", ["plain", "encrypted"])
def test_a_full_disk_loses_nothing_acknowledged_and_recovers(
    mount: Path, tmp_path: Path, mode: str
) -> None:
    master = tmp_path / "master"
    master.mkdir()
    args = " ".join(shlex.quote(a) for a in (sys.executable, str(CHILD), str(mount), str(master)))
    done = run_in_namespace(mount, f"exec {args} {mode}", timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert not (mount / "app.db").exists(), "the tmpfs was visible outside its namespace"

    # filled mid-write: single inserts, then a bulk insert, each a typed, stable error
    assert [code for code, _, _ in out["full_errors"]] == ["STORAGE_FULL", "STORAGE_FULL"]
    assert all(name == "SQLITE_FULL" for _, _, name in out["full_errors"])
    assert all("Free some space" in message for _, message, _ in out["full_errors"])
    assert out["acked_while_filling"] > 0
    assert out["bulk_stored"] is False and out["bulk_present_while_full"] == 0
    assert out["read_while_full"] is True
    assert out["count_while_full"] == out["acked"] - 1  # all but the write after freeing

    # filled mid-replication: reported on state.errors, retried, completed once freed
    assert "STORAGE_FULL" in out["replication_errors"]
    assert out["pulled_when_full"] < 400
    assert out["pulled_after"] == out["pulled_reopened"] == 400

    # reopened: every acknowledged write is there, the file is sound
    assert out["acked_missing"] == [] and out["bad_values"] == []
    assert out["bulk_present_after"] == 0  # the failed bulk insert left nothing behind
    assert out["integrity"] == "ok"
