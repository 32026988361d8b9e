"""The partial mesh's choice of links (plugins/replication_webrtc/mesh.py), on random topics.

Pure functions: the graph of 2..200 members must be connected, symmetric, within
``max_links`` per member, the same whoever computes it, a full mesh while small, and change
only a few links when one member joins or leaves.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import pytest

from p2pdb.errors import ValidationError
from p2pdb.plugins.replication_webrtc import WebRTCReplicationOptions, aiortc_connection_handler
from p2pdb.plugins.replication_webrtc.mesh import (
    DEFAULT_MAX_LINKS,
    check_max_links,
    choose_links,
    mesh_graph,
    surplus_links,
)

Graph = dict[str, frozenset[str]]


def ids(rng: random.Random, count: int) -> list[str]:
    """Signaling-like ids (the server issues random tokens)."""
    return [f"{rng.getrandbits(64):016x}"[:12] for _ in range(count)]


def edges(graph: Graph) -> set[frozenset[str]]:
    return {frozenset((a, b)) for a, linked in graph.items() for b in linked}


def eccentricities(graph: Graph, starts: int = 24) -> dict[str, int]:
    """Hops from (up to ``starts``) members to the farthest one (fails if some member is
    unreachable)."""
    out = {}
    for start in sorted(graph)[:starts]:
        hops = {start: 0}
        queue = deque([start])
        while queue:
            member = queue.popleft()
            for other in graph[member]:
                if other not in hops:
                    hops[other] = hops[member] + 1
                    queue.append(other)
        assert len(hops) == len(graph), f"{start} reaches {len(hops)} of {len(graph)} members"
        out[start] = max(hops.values())
    return out


def check_graph(graph: Graph, members: list[str], max_links: int) -> int:
    """Assert the invariants; return the diameter (as seen from 24 members)."""
    assert set(graph) == set(members)
    for member, linked in graph.items():
        assert member not in linked
        assert len(linked) <= max_links
        assert len(linked) >= min(2, len(members) - 1)  # the ring, at least
        for other in linked:
            assert member in graph[other], f"{member}->{other} is not symmetric"
    return max(eccentricities(graph).values())


@pytest.mark.parametrize("max_links", [2, 3, 4, 8])
def test_random_topics_are_connected_symmetric_and_bounded(max_links: int) -> None:
    rng = random.Random(1300 + max_links)
    sizes = [2, 3, 5, 9, 10, 16, 17, 33, 64, 100, 200] + [rng.randint(2, 200) for _ in range(12)]
    for n in sizes:
        members = ids(rng, n)
        graph = mesh_graph(members, max_links)
        diameter = check_graph(graph, members, max_links)
        if n <= max_links + 1:
            assert all(len(linked) == n - 1 for linked in graph.values()), "full mesh"
        elif max_links >= 4:
            # the chords keep paths short (a bare ring of 200 would need 100 hops)
            assert diameter <= (12 if max_links == 4 else 8), (n, diameter)
        if n > max_links + 1 and max_links >= 4:
            mean = sum(len(v) for v in graph.values()) / n
            assert mean >= 0.75 * max_links, f"slots left unused: mean degree {mean}"


def test_every_member_computes_the_same_symmetric_choice() -> None:
    rng = random.Random(7)
    members = ids(rng, 40)
    chosen = {m: choose_links(m, [o for o in reversed(members) if o != m], 4) for m in members}
    for member, linked in chosen.items():
        assert len(linked) <= 4
        for other in linked:
            assert member in chosen[other]
    assert chosen == dict(mesh_graph(members, 4))


def test_small_topics_keep_the_full_mesh() -> None:
    rng = random.Random(3)
    for n in range(1, DEFAULT_MAX_LINKS + 2):
        members = ids(rng, n)
        for member in members:
            others = [o for o in members if o != member]
            assert choose_links(member, others) == frozenset(others)
    ten = ids(rng, DEFAULT_MAX_LINKS + 2)
    assert len(choose_links(ten[0], ten[1:])) < len(ten) - 1  # beyond: partial


@pytest.mark.parametrize("max_links", [4, 8])
def test_one_join_or_leave_changes_few_links(max_links: int) -> None:
    rng = random.Random(99 + max_links)
    worst = 0
    for _ in range(60):
        n = rng.randint(max_links + 2, 200)
        members = ids(rng, n)
        before = edges(mesh_graph(members, max_links))
        joined = edges(mesh_graph([*members, *ids(rng, 1)], max_links))
        left = edges(mesh_graph(members[:-1], max_links))
        worst = max(worst, len(before ^ joined), len(before ^ left))
    # a reshuffle would change most of the n * max_links / 2 links
    assert worst <= 5 * max_links, worst


@dataclass(frozen=True)
class FakeLink:
    remote_id: str
    initiator: bool


def test_surplus_links_go_only_after_every_wanted_link_is_open() -> None:
    members = {"b", "c", "d", "e"}
    wanted = frozenset({"b", "c"})
    old = [FakeLink("d", True), FakeLink("e", False), FakeLink("b", True)]
    assert surplus_links(wanted, members, old) == []  # "c" is not open yet
    now = [*old, FakeLink("c", False)]
    # the initiator drops its unwanted link; the one the other side made stays
    assert surplus_links(wanted, members, now) == [FakeLink("d", True)]
    # a link to a peer not (or not yet again) in the member list outlives signaling trouble
    assert surplus_links(wanted, {"b", "c"}, now) == []


def test_max_links_is_checked() -> None:
    assert check_max_links(2) == 2
    for bad in (1, 0, -3, 2.5, True, "8", None):
        with pytest.raises(ValidationError) as caught:
            check_max_links(bad)
        assert caught.value.code == "WEBRTC_SETTING_INVALID"
    with pytest.raises(ValidationError):
        WebRTCReplicationOptions(max_links=1)
    assert WebRTCReplicationOptions(max_links=4).max_links == 4
    assert WebRTCReplicationOptions().max_links is None
    with pytest.raises(ValidationError) as caught:
        aiortc_connection_handler("ws://127.0.0.1:1", max_links=1)
    assert caught.value.code == "WEBRTC_SETTING_INVALID"
