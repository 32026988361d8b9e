"""A p2pdb peer whose handler accepts compressed frames (the default) and a real RxDB 17.6
peer: RxDB sends no hello, so nothing is compressed, and documents large enough to be
compressed between p2pdb peers replicate both ways in plain frames, no longer than RxDB's
own chunks (16384 UTF-16 units: its simple-peer layer costs it more per byte in longer
ones)."""

from __future__ import annotations

from typing import Any

from rxdb_harness import Stack, WireLog

WAIT_MS = 30_000


def docs(prefix: str, count: int) -> list[dict[str, Any]]:
    words = "alpha bravo charlie delta echo local first sqlite replication peer".split()
    return [
        {
            "id": f"{prefix}{i:04d}",
            "text": " ".join(words[(i + j) % 10] for j in range(200)),
            "done": False,
            "n": i,
        }
        for i in range(count)
    ]


async def test_rxdb_peers_get_plain_frames(stack: Stack, wire: WireLog) -> None:
    url = await stack.signaling("p2pdb")
    topic = stack.topic()
    rx = await stack.rxdb("rx", url, topic)
    py = await stack.p2pdb("py")
    await py.collection.bulk_insert(docs("py-", 200))
    assert await rx.call("bulkInsert", docs=docs("rx-", 200)) == 200
    pool = await py.replicate(url, topic)
    (session,) = await py.wait_peers(1)
    await py.wait_count(400)
    assert await rx.call("waitCount", count=400, timeoutMs=WAIT_MS) == 400
    link = pool.connection.link_to(session.peer)
    assert link is not None
    assert link.compression.accept and not link.compression.sending
    assert link.compression.counts.frames_sent == link.compression.counts.frames_received == 0
    assert max(wire.frame_lengths) > 1200  # messages compression would have packed
    assert max(wire.frame_lengths) <= 16384  # RxDB's SIMPLE_PEER_MAX_MESSAGE_LENGTH
    assert len([n for n in wire.frame_lengths if n > 16000]) >= 10  # the batches were chunked
    assert not py.errors
