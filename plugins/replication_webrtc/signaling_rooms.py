"""Where the signaling server's rooms live: the :class:`RoomRegistry` seam and its in-memory
implementation (the default).

The server (:mod:`.signaling_server`) owns the sockets of its own members and every
per-socket limit; a registry owns room membership (with the per-room limit) and reaches the
members of a room. :class:`MemoryRooms` keeps them in this process (one node);
:mod:`.signaling_redis` shares them between any number of nodes through Redis. Both announce
RxDB's ``{"type": "joined", "otherPeerIds": [...]}`` (in join order) to every member of a room
whose membership changed, through :meth:`RoomHost.deliver` for the members of this node.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum
from typing import Protocol

import orjson

__all__ = ["MemoryRooms", "Relay", "RoomHost", "RoomRegistry", "joined_frame"]


def joined_frame(member_ids: Iterable[str]) -> str:
    """RxDB's membership update: ``{"type":"joined","otherPeerIds":[...]}``."""
    return orjson.dumps({"type": "joined", "otherPeerIds": list(member_ids)}).decode("utf-8")


class Relay(Enum):
    """What became of a signal to a member of another node."""

    DELIVERED = "delivered"
    """Handed to the receiver's node."""
    GONE = "gone"
    """No such peer (it left: a benign race); the signal is dropped."""
    OUTSIDE = "outside"
    """The peer exists but is not in the room the signal names (a protocol violation)."""


class RoomHost(Protocol):
    """What a registry needs from its server: the sockets of this node's members."""

    def deliver(self, peer_id: str, text: str) -> None:
        """Queue ``text`` for this node's member ``peer_id`` (ignored if it is gone)."""


class RoomRegistry(Protocol):
    """Room membership shared by the signaling nodes that use the same registry.

    Lifecycle: ``await start(host)`` once before the first join, ``await close()`` at the end.
    ``join`` and ``relay`` may raise :class:`~p2pdb.errors.ReplicationError`
    (``SIGNALING_REDIS_UNAVAILABLE``) when the shared store cannot be reached."""

    async def start(self, host: RoomHost) -> None:
        """Start serving ``host``'s members (connect, subscribe, heartbeat)."""

    async def close(self) -> None:
        """Leave every room of this node and stop; waits for its tasks."""

    async def join(self, room: str, peer_id: str, max_peers: int) -> bool:
        """Add ``peer_id`` (a member of this node) to ``room`` and announce the new list;
        False (nothing changed) when the room already holds ``max_peers`` members."""

    def leave(self, peer_id: str, rooms: Iterable[str]) -> None:
        """Remove this node's ``peer_id`` from ``rooms`` and announce each changed room."""

    async def relay(self, room: str, receiver_id: str, text: str) -> Relay:
        """Deliver a signal to ``receiver_id``, a member of another node."""

    def rooms(self) -> dict[str, list[str]]:
        """A snapshot of the rooms this node knows, with their member ids in join order."""


class MemoryRooms:
    """Rooms kept in this process: one signaling node, nothing shared (the default)."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, None]] = {}  # room -> member ids, in join order
        self._host: RoomHost | None = None
        self._closing = False

    async def start(self, host: RoomHost) -> None:
        """Remember the host whose members are announced."""
        self._host = host

    async def close(self) -> None:
        """Forget every room (nothing is announced any more)."""
        self._closing = True
        self._rooms.clear()

    async def join(self, room: str, peer_id: str, max_peers: int) -> bool:
        """Add a member (no await inside: in order with the socket's other frames)."""
        members = self._rooms.get(room, {})
        if len(members) >= max_peers:
            return False
        self._rooms.setdefault(room, {})[peer_id] = None
        self._announce(room)
        return True

    def leave(self, peer_id: str, rooms: Iterable[str]) -> None:
        """Remove a member from its rooms, announcing each room left non-empty."""
        for room in sorted(rooms):
            members = self._rooms.get(room)
            if members is None:
                continue
            members.pop(peer_id, None)
            if members:
                self._announce(room)
            else:
                del self._rooms[room]

    async def relay(self, room: str, receiver_id: str, text: str) -> Relay:
        """Every member is local here: a receiver the server does not hold is gone."""
        return Relay.GONE

    def rooms(self) -> dict[str, list[str]]:
        """Every room with its member ids."""
        return {room: list(members) for room, members in self._rooms.items()}

    def _announce(self, room: str) -> None:
        members = self._rooms.get(room)
        if not members or self._closing or self._host is None:
            return
        text = joined_frame(members)
        for member_id in list(members):
            self._host.deliver(member_id, text)
