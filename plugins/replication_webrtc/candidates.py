"""Adding a remote peer's trickled ICE candidates, where one bad candidate never ends a link.

aioice resolves an mDNS (``<uuid>.local``) host candidate inside ``addIceCandidate``: that
waits up to a second per name, and raises if it cannot open its mDNS socket (for example
``OSError(98, 'Address already in use')`` when another program holds UDP port 5353 for
itself). So :class:`CandidateAdder` adds ``.local`` candidates in tasks of its own, lets
end-of-candidates wait for them, and logs (once, at info level) and skips any candidate
that aiortc or aioice rejects; the link goes on with the others.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Coroutine
from typing import Any

from aiortc import RTCIceCandidate, RTCPeerConnection

__all__ = ["CandidateAdder", "EarlyCandidates", "is_mdns_name"]

logger = logging.getLogger("p2pdb.webrtc.candidates")

# as aioice.mdns recognises them (draft-ietf-mmusic-mdns-ice-candidates)
_MDNS_NAME_RE = re.compile(r"^[a-zA-Z0-9-]{1,63}\.local$")


def is_mdns_name(host: str) -> bool:
    """Whether ``host`` is an mDNS name that aioice resolves (``<name>.local``)."""
    return _MDNS_NAME_RE.match(host) is not None


class CandidateAdder:
    """Adds remote candidates to one ``RTCPeerConnection`` for the link to ``remote_id``.

    Owns the tasks that add ``.local`` candidates; :meth:`close` cancels and awaits them.
    """

    def __init__(self, pc: RTCPeerConnection, remote_id: str) -> None:
        self._pc = pc
        self._remote_id = remote_id
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    async def add(self, candidate: RTCIceCandidate | None) -> None:
        """Add ``candidate`` (``None``: end of candidates) without ever raising.

        A ``.local`` candidate is added in the background, so the caller's signal loop
        goes on at once; end-of-candidates waits until those are in.
        """
        if self._closed:
            return
        if candidate is not None and is_mdns_name(candidate.ip):
            self._spawn(self._add_now(candidate))
        elif candidate is None and self._tasks:
            self._spawn(self._end_after(set(self._tasks)))
        else:
            await self._add_now(candidate)

    async def close(self) -> None:
        """Cancel the additions still running and wait for them (idempotent)."""
        self._closed = True
        tasks = set(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _end_after(self, pending: set[asyncio.Task[None]]) -> None:
        await asyncio.wait(pending)
        await self._add_now(None)

    async def _add_now(self, candidate: RTCIceCandidate | None) -> None:
        try:
            await self._pc.addIceCandidate(candidate)
        except Exception as error:  # one candidate only: the link goes on with the others
            what = "end of candidates" if candidate is None else f"candidate {candidate.ip!r}"
            # repr, not the error: its traceback would keep aioice's frames (and sockets) alive
            logger.info("%s from %s ignored: %s", what, self._remote_id, repr(error))


class EarlyCandidates:
    """Candidates that arrive before their offer (RxDB sends them that way), kept for the
    offer's link: per remote peer, those of one ``connectionId``, at most
    :attr:`MAX_PER_PEER`."""

    MAX_PER_PEER = 32

    def __init__(self) -> None:
        self._kept: dict[str, tuple[str | None, list[dict[str, Any]]]] = {}

    def keep(self, remote_id: str, connection_id: str | None, data: dict[str, Any]) -> None:
        """Keep a ``candidate`` signal (anything else is dropped)."""
        if data.get("type") != "candidate":
            logger.debug("signal %r from %s before any offer dropped", data.get("type"), remote_id)
            return
        early_id, early = self._kept.get(remote_id, (connection_id, []))
        if early_id != connection_id:
            early = []
        if len(early) < self.MAX_PER_PEER:
            early.append(data)
        self._kept[remote_id] = (connection_id, early)

    def take(self, remote_id: str, connection_id: str | None) -> list[dict[str, Any]]:
        """The candidates kept for the offer of ``connection_id`` (forgotten here)."""
        early_id, early = self._kept.pop(remote_id, (None, []))
        return early if early_id == connection_id else []

    def keep_only(self, members: set[str]) -> None:
        """Forget the candidates of peers that left the room."""
        for remote_id in list(self._kept):
            if remote_id not in members:
                del self._kept[remote_id]

    def clear(self) -> None:
        """Forget everything (a new signaling id)."""
        self._kept.clear()
