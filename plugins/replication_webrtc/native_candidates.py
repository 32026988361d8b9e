"""Adding a remote peer's candidates to a native connection, ``.local`` names included.

Browsers hide their addresses behind mDNS names (``<uuid>.local``). libdatachannel resolves
a candidate's host name with the system resolver, which knows ``.local`` names only where
nss-mdns is installed; so, as the aiortc engine does (:mod:`.candidates`), such candidates
are resolved here with aioice's mDNS resolver, in tasks of their own (a name may take up
to a second, or never answer), and added with the address they resolved to. A candidate
that cannot be resolved or that libdatachannel refuses is logged (info) and skipped: the
link goes on with the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aioice.ice import get_or_create_mdns_protocol, unref_mdns_protocol

from .candidates import is_mdns_name

__all__ = ["NativeCandidateAdder"]

logger = logging.getLogger("p2pdb.webrtc.native")

_MDNS_TIMEOUT = 2.0


class NativeCandidateAdder:
    """Adds candidates through ``add`` (``(candidate line, mid)``), resolving ``.local``
    names in the background; :meth:`close` cancels and awaits what is still running."""

    def __init__(self, add: Callable[[str, str | None], Awaitable[None]], remote_id: str) -> None:
        self._add = add
        self._remote_id = remote_id
        self._tasks: set[asyncio.Task[None]] = set()
        self._mdns_used = False
        self._closed = False

    async def add(self, text: str, mid: str | None) -> None:
        """Add ``candidate:...`` (without ``a=``); never raises."""
        if self._closed:
            return
        parts = text.split()
        if len(parts) > 4 and is_mdns_name(parts[4]):
            task = asyncio.get_running_loop().create_task(self._resolved(parts, mid))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        await self._add_now(text, mid)

    async def close(self) -> None:
        """Cancel the resolutions still running, wait for them, release the resolver."""
        self._closed = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._mdns_used:
            await unref_mdns_protocol(self)

    async def _resolved(self, parts: list[str], mid: str | None) -> None:
        name = parts[4]
        try:
            self._mdns_used = True
            protocol = await get_or_create_mdns_protocol(self)
            address = await protocol.resolve(name, timeout=_MDNS_TIMEOUT)
        except Exception as error:  # e.g. OSError: UDP port 5353 held by another program
            logger.info("mDNS candidate %r from %s ignored: %r", name, self._remote_id, error)
            return
        if address is None:
            logger.info("mDNS candidate %r from %s did not resolve", name, self._remote_id)
            return
        await self._add_now(" ".join([*parts[:4], address, *parts[5:]]), mid)

    async def _add_now(self, text: str, mid: str | None) -> None:
        try:
            await self._add(text, mid)
        except Exception as error:  # one candidate only: the link goes on with the others
            logger.info("candidate %r from %s ignored: %r", text[:80], self._remote_id, error)
