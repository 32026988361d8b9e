"""Adding a remote peer's candidates to a native connection, ``.local`` names included.

Browsers hide their addresses behind mDNS names (``<uuid>.local``). libdatachannel resolves
a candidate's host name with the system resolver, which knows ``.local`` names only where
nss-mdns is installed; so, as the aiortc engine does (:mod:`.candidates`), such candidates
are resolved here with aioice's mDNS resolver, in tasks of their own (a name may take up
to a second, or never answer), and added with the address they resolved to. A candidate
that cannot be resolved or that libdatachannel refuses is logged (info) and skipped: the
link goes on with the others.

An adder made with ``hold=True`` (the native *answerer*'s) keeps every candidate until
:meth:`NativeCandidateAdder.release`: with no remote candidate, our ICE agent sends no
connectivity check before the offerer has our answer. A libdatachannel 0.24 offerer (RxDB's
node-datachannel) that got such early checks connects ICE *inside* its
``setRemoteDescription(answer)``, before it stores the answer, and starts DTLS at once; if
the handshake reaches our certificate before the answer is stored, it verifies it against
no fingerprint and fails ("DTLS alert: unknown CA", ``WEBRTC_CONNECTION_FAILED``). A loaded
machine widens that window. Held back, our candidates reach the offerer after our answer
(libdatachannel adds the answer's own candidates only once it is stored), its checks reach
us, and our agent answers them (the offerer's address becomes a peer-reflexive candidate).
The link releases the held candidates when our ICE connects, or after a short hold for the
case the offerer cannot reach us first (a NAT that needs our packets out first, a TURN
relay that needs our permission).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aioice.ice import get_or_create_mdns_protocol, unref_mdns_protocol

from .candidates import is_mdns_name

__all__ = ["NativeCandidateAdder"]

logger = logging.getLogger("p2pdb.webrtc.native")

_MDNS_TIMEOUT = 2.0
_MAX_HELD = 64  # candidates kept while holding (more are dropped, as the link's pending ones)


class NativeCandidateAdder:
    """Adds candidates through ``add`` (``(candidate line, mid)``), resolving ``.local``
    names in the background; :meth:`close` cancels and awaits what is still running."""

    def __init__(
        self,
        add: Callable[[str, str | None], Awaitable[None]],
        remote_id: str,
        *,
        hold: bool = False,
    ) -> None:
        self._add = add
        self._remote_id = remote_id
        self._tasks: set[asyncio.Task[None]] = set()
        self._held: list[tuple[str, str | None]] | None = [] if hold else None
        self._mdns_used = False
        self._closed = False

    @property
    def holding(self) -> bool:
        """Whether candidates are still held back (until :meth:`release`)."""
        return self._held is not None

    async def add(self, text: str, mid: str | None) -> None:
        """Add ``candidate:...`` (without ``a=``), or hold it; never raises."""
        if self._closed:
            return
        if self._held is not None:
            if len(self._held) < _MAX_HELD:
                self._held.append((text, mid))
            return
        parts = text.split()
        if len(parts) > 4 and is_mdns_name(parts[4]):
            self._spawn(self._resolved(parts, mid))
            return
        await self._add_now(text, mid)

    def release(self) -> None:
        """Stop holding: add the held candidates (in a task) and every later one at once
        (idempotent)."""
        held, self._held = self._held, None
        if held and not self._closed:
            logger.debug("adding %d held candidate(s) of %s", len(held), self._remote_id)
            self._spawn(self._add_all(held))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add_all(self, candidates: list[tuple[str, str | None]]) -> None:
        for text, mid in candidates:
            await self.add(text, mid)

    async def close(self) -> None:
        """Cancel the resolutions still running, wait for them, release the resolver."""
        self._closed, self._held = True, None
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
