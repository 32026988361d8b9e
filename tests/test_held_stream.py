"""``HeldEventStream``: what is emitted before the first subscriber reaches it (bounded), so a
pool's errors reported while ``replicate_webrtc()`` was still joining are not lost."""

from __future__ import annotations

from p2pdb.streams import HeldEventStream


def test_the_first_subscriber_gets_what_came_before_it_and_later_ones_do_not() -> None:
    stream: HeldEventStream[int] = HeldEventStream(limit=3)
    for n in range(5):
        stream.on_next(n)
    first: list[int] = []
    stream.subscribe(on_next=first.append)
    assert first == [2, 3, 4]  # the last ``limit`` items, in order
    stream.on_next(5)
    later: list[int] = []
    stream.subscribe(on_next=later.append)
    stream.on_next(6)
    assert first == [2, 3, 4, 5, 6]
    assert later == [6]
