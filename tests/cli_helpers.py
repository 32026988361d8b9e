"""Running the real command line from tests: ``python -m p2pdb ...`` in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import p2pdb


def run(
    *args: str,
    cwd: Path | None = None,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m p2pdb ARGS`` with this checkout first on the path, as for the tests."""
    return subprocess.run(
        [sys.executable, "-m", "p2pdb", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        input=stdin,
        env={
            **os.environ,
            "PYTHONPATH": str(Path(p2pdb.__file__).parent.parent),
            **(env or {}),
        },
    )
