"""Which peers of a topic link with which: a full mesh while it is small, a partial one beyond.

Every member of a topic sees the same member list (the signaling ids of the room's
``joined`` frame, plus its own), so every member can compute the same graph from it and
link only with its own neighbours in that graph. The rules:

- **Small topics: a full mesh.** While every member would have at most ``max_links``
  links (``members <= max_links + 1``), everyone links with everyone, as RxDB does.
- **Beyond: a ring plus chords.** Members sit on a ring at ``sha256(id)`` (so their places
  do not depend on how many there are). Each links with its ring neighbours, which keeps
  the graph connected whatever else happens. Then, round after round, each member in ring
  order proposes one chord: to the member at 1/2, 1/4, 1/8 ... of the ring ahead of it
  (a Chord-like skip list: few hops between any two members), and in the other rounds
  (at least the last two) to a pseudo-random point of the ring (a hash of its id and the
  round: "random" links that every member still computes alike; with ``max_links=4`` both
  chords are random, which halves the hops of a ring with one finger). A chord is made
  only if both ends have fewer than ``max_links`` links. The graph is undirected, so links
  are symmetric: if A wants B, B wants A.
- **Stable under churn.** Places and proposal points depend only on ids, so a member
  joining or leaving changes only the links around its own place and the chords that
  pointed at it (a few links, not a reshuffle).

Only p2pdb peers follow these rules; an RxDB peer in the topic links as RxDB does. A p2pdb
peer accepts every offer (so an RxDB peer that initiates is always linked) and initiates to
an RxDB peer only where the graph says so (the RxDB peer is then one member of the graph).

A peer adds the links it wants first and closes the ones it no longer wants only once every
wanted link is open (:func:`surplus_links`), so the topic stays connected during churn.
Documents cross several hops: each link replicates through the fork/master protocol, which
converges over chains.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left
from collections.abc import Collection, Iterable, Set
from typing import Protocol, TypeVar

from p2pdb.errors import ValidationError

__all__ = [
    "DEFAULT_MAX_LINKS",
    "MeshLink",
    "check_max_links",
    "choose_links",
    "mesh_graph",
    "ring_position",
    "surplus_links",
]

#: Links per peer beyond which a topic's peers keep a partial mesh.
DEFAULT_MAX_LINKS = 8
#: How many of the ``max_links - 2`` chord rounds go to pseudo-random points at least (the
#: last ones; also those whose finger would fall closer than the ring neighbours).
RANDOM_ROUNDS = 2
_RING = 1 << 64


def check_max_links(value: object) -> int:
    """``value`` if it is a valid ``max_links`` (an integer >= 2: the ring needs two),
    else :class:`ValidationError` ``WEBRTC_SETTING_INVALID``."""
    if type(value) is not int or value < 2:
        raise ValidationError(
            f"max_links must be an integer >= 2, got {value!r}.",
            code="WEBRTC_SETTING_INVALID",
            setting="max_links",
        )
    return value


def ring_position(peer_id: str) -> int:
    """Where ``peer_id`` sits on the ring: the first 8 bytes of its SHA-256, as an int."""
    return int.from_bytes(hashlib.sha256(peer_id.encode()).digest()[:8], "big")


def mesh_graph(
    members: Iterable[str], max_links: int = DEFAULT_MAX_LINKS
) -> dict[str, frozenset[str]]:
    """The links of every member of a topic, as an adjacency map (the same on every peer).

    A full mesh when ``len(members) <= max_links + 1``; otherwise the ring and chords of
    the module docstring: connected, symmetric, every member with at most ``max_links``.
    """
    check_max_links(max_links)
    # sorted by place on the ring (ties, which SHA-256 makes theoretical, by id)
    ring = sorted(set(members), key=lambda m: (ring_position(m), m))
    n = len(ring)
    if n <= max_links + 1:
        return {m: frozenset(o for o in ring if o != m) for m in ring}
    adjacency: dict[str, set[str]] = {m: set() for m in ring}

    def link(a: str, b: str) -> None:
        adjacency[a].add(b)
        adjacency[b].add(a)

    for i, member in enumerate(ring):
        link(member, ring[(i + 1) % n])
    places = [ring_position(m) for m in ring]
    rounds = max_links - 2
    randoms = min(RANDOM_ROUNDS, rounds)
    fingers = min(rounds - randoms, max(0, n.bit_length() - 2))
    for r in range(rounds):
        for i, member in enumerate(ring):
            if r < fingers:
                point = (places[i] + (_RING >> (r + 1))) % _RING
            else:
                point = ring_position(f"{member}#{r}")
            j = bisect_left(places, point) % n  # the first member at or after the point
            target = ring[j]
            if target == member or target in adjacency[member]:
                continue
            if len(adjacency[member]) < max_links and len(adjacency[target]) < max_links:
                link(member, target)
    return {m: frozenset(adjacency[m]) for m in ring}


def choose_links(
    own: str, others: Iterable[str], max_links: int = DEFAULT_MAX_LINKS
) -> frozenset[str]:
    """The members ``own`` links with, given the other members of its topic."""
    members = {own, *others}
    return mesh_graph(members, max_links)[own]


class MeshLink(Protocol):
    """What :func:`surplus_links` reads of a link (a :class:`~.link.Link` fits)."""

    @property
    def remote_id(self) -> str:
        """The remote peer's signaling id."""

    @property
    def initiator(self) -> bool:
        """Whether this side made the link (and so decides to end it)."""


_L = TypeVar("_L", bound=MeshLink)


def surplus_links(wanted: Set[str], members: Set[str], open_links: Collection[_L]) -> list[_L]:
    """The open links to close now: those this side initiated to members it no longer
    wants, but only once every wanted member has an open link (a link is dropped only after
    its replacement is up, so the topic stays connected while members come and go).

    Only the initiator of a pair drops it, so two peers whose member lists differ for a
    moment do not take turns dropping and remaking the same link; links others made to us
    (an RxDB peer's, a peer's whose list is behind) are kept, and so are links to peers
    that are not (or not yet again) in ``members``: a working link outlives signaling
    trouble.
    """
    if not wanted <= {link.remote_id for link in open_links}:
        return []
    return [
        link
        for link in open_links
        if link.initiator and link.remote_id in members and link.remote_id not in wanted
    ]
