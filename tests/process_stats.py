"""Memory and CPU of another process, from /proc (psutil is not a dependency)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from p2pdb.tasks import cancel_and_wait


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class PeakRss:
    """Samples a process's RSS every 20 ms while the ``async with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.before = rss_mb(pid)
        self.peak = self.before
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        while True:
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_mb(self.pid))
            await asyncio.sleep(0.02)  # a sampling period, not a wait for something

    async def __aenter__(self) -> PeakRss:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        await cancel_and_wait([self._task])
        with contextlib.suppress(OSError):
            self.peak = max(self.peak, rss_mb(self.pid))

    @property
    def growth(self) -> float:
        """Peak minus the RSS when the block was entered, in MB."""
        return self.peak - self.before
