"""Shared pieces of the benchmark scripts: the document generator, the schema, timing,
statistics and the result table.

Everything here is deterministic (seeded) so runs compare. The machine these were written
on is shared and noisy: every script interleaves its baseline with the measured figure in
each round and reports the median over rounds of the figure, of the baseline and of the
per-round ratio.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

# Run from a checkout without installing: make ``import p2pdb`` find the package.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

#: A realistic collection schema: 8 typed properties (string primary key, a title, an
#: indexed integer, a float, a boolean, an enum-like string, a string array and a long text).
SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 40},
        "title": {"type": "string", "maxLength": 200},
        "n": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "done": {"type": "boolean"},
        "category": {"type": "string", "maxLength": 20},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}},
        "text": {"type": "string", "maxLength": 4000},
    },
    "required": ["id", "title", "n", "score", "done", "text"],
    "indexes": ["n"],
}

_WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu local first "
    "sqlite replication checkpoint document revision change stream peer master fork"
).split()
_TAGS = ("red", "green", "blue", "urgent", "later", "home", "work")
N_MAX = 1_000_000


def make_docs(count: int, seed: int = 1, prefix: str = "doc") -> list[dict[str, Any]]:
    """``count`` documents of about 1 KB (compact JSON) matching :data:`SCHEMA`."""
    rng = random.Random(seed)
    docs = []
    for i in range(count):
        words = rng.choices(_WORDS, k=125)
        docs.append(
            {
                "id": f"{prefix}-{i:07d}",
                "title": f"item {i} " + " ".join(rng.choices(_WORDS, k=3)),
                "n": rng.randrange(N_MAX),
                "score": round(rng.random(), 6),
                "done": rng.random() < 0.3,
                "category": f"c{rng.randrange(10)}",
                "tags": rng.sample(_TAGS, k=rng.randrange(1, 4)),
                "text": " ".join(words)[:880],
            }
        )
    return docs


@contextmanager
def temp_dir() -> Iterator[str]:
    """A fresh directory on the same disk as the system temp dir, removed afterwards."""
    path = tempfile.mkdtemp(prefix="p2pdb-bench-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self) -> Timer:
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._start


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(p / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Row:
    """One line of the result table: a figure, its baseline, and their ratio per round.

    ``higher_is_better`` says how to read the ratio: for rates (docs/s) the ratio is
    figure / baseline; for times (ms) it is baseline / figure, so a ratio >= target is good
    either way.
    """

    name: str
    unit: str
    baseline_name: str = ""
    target: float | None = None
    higher_is_better: bool = True
    values: list[float] = field(default_factory=list)
    baselines: list[float] = field(default_factory=list)

    def add(self, value: float, baseline: float | None = None) -> None:
        self.values.append(value)
        if baseline is not None:
            self.baselines.append(baseline)

    def ratios(self) -> list[float]:
        if self.higher_is_better:
            return [v / b for v, b in zip(self.values, self.baselines, strict=False) if b]
        return [b / v for v, b in zip(self.values, self.baselines, strict=False) if v]


def _fmt(value: float) -> str:
    if value != value:  # nan
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def print_table(title: str, rows: Sequence[Row], rounds: int, notes: Sequence[str] = ()) -> bool:
    """Print the medians; returns True when every targeted ratio is met."""
    print(f"\n{title}  (median of {rounds} rounds; ratio = per-round ratio, median)")
    header = ("figure", "value", "unit", "baseline", "base value", "ratio", "target", "")
    lines = [header]
    all_met = True
    for row in rows:
        ratios = row.ratios()
        ratio = median(ratios) if ratios else float("nan")
        met = ""
        if row.target is not None and ratios:
            ok = ratio >= row.target
            all_met &= ok
            met = "ok" if ok else "BELOW"
        lines.append(
            (
                row.name,
                _fmt(median(row.values)) if row.values else "-",
                row.unit,
                row.baseline_name or "-",
                _fmt(median(row.baselines)) if row.baselines else "-",
                _fmt(ratio) if ratios else "-",
                f">= {row.target:g}" if row.target is not None else "-",
                met,
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for n, line in enumerate(lines):
        cells = [
            str(c).ljust(w) if i in (0, 2, 3, 7) else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  " + "  ".join(cells).rstrip())
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))
    for note in notes:
        print(f"  * {note}")
    return all_met


def rounds_from_argv(default: int) -> int:
    """``--rounds N`` on the command line, else ``default``."""
    if "--rounds" in sys.argv:
        return int(sys.argv[sys.argv.index("--rounds") + 1])
    return default


def only_from_argv() -> set[str] | None:
    """``--only a,b`` on the command line: run only those parts (for profiling)."""
    if "--only" in sys.argv:
        return set(sys.argv[sys.argv.index("--only") + 1].split(","))
    return None


def machine_line() -> str:
    import platform
    import sqlite3

    line = (
        f"Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    line += f"; p2pdb {_git_version()}"
    return line


def _git_version() -> str:
    """The checkout's commit, with ``+dirty`` when p2pdb/ has uncommitted changes."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=_ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "p2pdb"],
            cwd=_ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "(unknown commit)"
    return (head or "(unknown commit)") + ("+dirty" if dirty else "")


def wanted(only: set[str] | None, name: str) -> bool:
    return only is None or name in only
