"""Summarise a py-spy "raw" (collapsed stacks) profile: top functions by self and total time.

    py-spy record -r 500 --threads -f raw -o /tmp/core.txt -- \\
        python benchmarks/bench_core.py --rounds 3 --only bulk_insert
    python benchmarks/pyspy_top.py /tmp/core.txt [--filter p2pdb_bulk] [--top 25]

``--filter S`` keeps only samples whose stack contains S (for example the benchmark
function of one figure); writer-thread samples (aiosqlite) are kept by ``--filter`` when
they contain S too, so filter on a p2pdb frame such as ``WriteTxn.put`` to see the thread.
Percentages are of the kept samples; idle samples (``--idle`` not given) are not recorded.
"""

from __future__ import annotations

import re
import sys
from collections import Counter

_LINE = re.compile(r"^(.*) (\d+)$")
_STRIP = re.compile(r" \([^()]*:\d+\)$")


def _frame_name(frame: str) -> str:
    """``func (path/file.py:123)`` -> ``func (file.py)`` so lines of a function merge."""
    match = re.match(r"^(.*) \(([^()]*):\d+\)$", frame)
    if not match:
        return frame
    func, path = match.groups()
    return f"{func} ({path.rsplit('/', 2)[-2:][-1] if '/' in path else path})"


def main() -> int:
    args = sys.argv[1:]
    if not args:
        print(__doc__)
        return 2
    path = args[0]
    needle = args[args.index("--filter") + 1] if "--filter" in args else None
    top = int(args[args.index("--top") + 1]) if "--top" in args else 25
    total_samples = 0
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    with open(path) as f:
        for line in f:
            match = _LINE.match(line.rstrip("\n"))
            if not match:
                continue
            stack, count_text = match.groups()
            if needle is not None and needle not in stack:
                continue
            count = int(count_text)
            frames = stack.split(";")
            if frames and frames[0].startswith(("thread ", "process ")):
                while frames and frames[0].startswith(("thread ", "process ")):
                    threads[frames.pop(0)] += count
            names = [_frame_name(fr) for fr in frames]
            total_samples += count
            if names:
                self_counts[names[-1]] += count
            for name in set(names):
                incl_counts[name] += count
    if not total_samples:
        print("no samples matched")
        return 1
    print(f"{total_samples} samples" + (f" containing {needle!r}" if needle else ""))
    if threads:
        print(
            "threads: "
            + ", ".join(f"{t} {c * 100 / total_samples:.0f}%" for t, c in threads.most_common(4))
        )
    print(f"\n{'self %':>7}  function")
    for name, count in self_counts.most_common(top):
        print(f"{count * 100 / total_samples:7.1f}  {name}")
    print(f"\n{'total %':>7}  function")
    for name, count in incl_counts.most_common(top + 15):
        print(f"{count * 100 / total_samples:7.1f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
