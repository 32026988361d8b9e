"""The memory of answered pushes (``Arrivals``): bounded, forgetting only what was answered
before the arrival it is asked about (it reads the oldest entries only, which
``bench_head_to_head.py``'s push shows: it used to walk every entry on every arrival)."""

from __future__ import annotations

from p2pdb.replication.arrivals import FORGET_AFTER, Arrivals


def test_forget_before_keeps_pushes_answered_after_the_arrival() -> None:
    limit = FORGET_AFTER
    arrivals = Arrivals()
    arrivals.push_answered((f"d{i}", {"id": f"d{i}"}) for i in range(limit))
    middle = arrivals.next()
    arrivals.push_answered([("d0", {"id": "d0", "again": True})])  # pushed again: newer
    arrivals.push_answered((f"e{i}", {"id": f"e{i}"}) for i in range(10))
    arrivals.forget_before(middle)
    assert arrivals.pushed_after("d0", middle)
    assert arrivals.last_pushed("d0") == {"id": "d0", "again": True}
    assert arrivals.pushed_after("e3", middle)
    assert not arrivals.pushed_after("d1", -1) and arrivals.last_pushed("d1") is None
    assert arrivals.last_pushed(f"d{limit - 1}") is None
