"""zlib frames between p2pdb peers (plugins/replication_webrtc/compression.py): the pure
encoding, the negotiation in the handshake, and two real pools replicating with it."""

from __future__ import annotations

import random
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from replication_helpers import contents, wait_equal
from schemas import PEER_SCHEMA

import p2pdb
from p2pdb.errors import PeerError
from p2pdb.plugins.replication_webrtc import (
    ReplicationPool,
    aiortc_connection_handler,
    replicate_webrtc,
)
from p2pdb.plugins.replication_webrtc.compression import (
    MAX_INFLATED,
    MIN_BYTES,
    FrameCompression,
)
from p2pdb.plugins.replication_webrtc.framing import Reassembler
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

TOPIC = "p2pdb-compression-room"
WORDS = "alpha bravo charlie delta echo local first sqlite replication checkpoint peer".split()


def text_of(rng: random.Random, words: int) -> str:
    return " ".join(rng.choices(WORDS, k=words))


def roundtrip(sender: FrameCompression, receiver: FrameCompression, message: Any) -> list[Any]:
    frames = sender.encode(message, 60 * 1024)
    assert frames is not None
    reassembler = Reassembler()
    out = [receiver.feed(reassembler, frame) for frame in frames]
    assert out[-1] == message and all(m is None for m in out[:-1])
    return frames


def test_messages_round_trip_compressed_whole_or_in_chunks() -> None:
    rng = random.Random(7)
    sender, receiver = FrameCompression(), FrameCompression()
    assert sender.encode({"a": 1}, 60 * 1024) is None  # not agreed yet: plain framing
    assert sender.agree(["gzip", "zlib"]) and sender.sending

    small = {"id": "1", "method": "token", "params": []}
    assert roundtrip(sender, receiver, small) == [orjson.dumps(small).decode()]

    medium = {"docs": [text_of(rng, 200) for _ in range(20)]}
    (frame,) = roundtrip(sender, receiver, medium)
    assert isinstance(frame, bytes) and len(frame) < len(orjson.dumps(medium)) / 2

    large = {"docs": [text_of(rng, 200) + " ü€😀" for _ in range(2000)]}  # ~2.5 MB
    frames = roundtrip(sender, receiver, large)
    assert len(frames) > 1 and all(isinstance(f, bytes) for f in frames)
    assert all(len(f) <= 60 * 1024 for f in frames)

    # a very compressible chunked message: several chunk frames per compressed frame, so
    # that aiortc (whose cost is per message) does not get hundreds of tiny ones
    filler = {"docs": [{"id": i, "text": "x" * 1000} for i in range(5000)]}
    frames = roundtrip(sender, receiver, filler)
    assert len(orjson.dumps(filler)) > 5_000_000 and len(frames) <= 10

    noise = {"noise": "".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=300_000))}
    frames = roundtrip(sender, receiver, noise)
    assert all(len(f if isinstance(f, bytes) else f.encode()) <= 60 * 1024 for f in frames)
    assert sender.counts.frames_sent == receiver.counts.frames_received > 0
    assert sender.counts.bytes_after < sender.counts.bytes_before


def test_nothing_is_compressed_unless_both_accept() -> None:
    assert not FrameCompression().agree([])  # an RxDB peer, or a p2pdb peer with it off
    off = FrameCompression(accept=False)
    assert off.offers == () and not off.agree(["zlib"]) and off.encode({"a": 1}, 100) is None
    packed = zlib.compress(b'{"id": "1", "method": "token", "params": []}' + b" " * MIN_BYTES)
    assert off.inflate(packed) == packed  # not ours to inflate: the framing refuses it
    with pytest.raises(PeerError) as caught:
        Reassembler().feed(off.inflate(packed))
    assert caught.value.code == "WEBRTC_FRAME_INVALID"


def test_a_compressed_frame_holds_frames_of_one_message_only() -> None:
    two = zlib.compress(b'{"id": "1", "result": 1}\n{"id": "2", "result": 2}')
    with pytest.raises(PeerError) as caught:
        FrameCompression().feed(Reassembler(), two)
    assert caught.value.code == "WEBRTC_FRAME_INVALID"


def test_inflating_is_bounded() -> None:
    bomb = zlib.compress(b"[" + b" " * (4 * MAX_INFLATED) + b"]", 9)
    with pytest.raises(PeerError) as caught:
        FrameCompression().inflate(bomb)
    assert caught.value.code == "WEBRTC_MESSAGE_TOO_LARGE"
    exact = zlib.compress(b"[" + b" " * (MAX_INFLATED - 2) + b"]")
    assert len(FrameCompression().inflate(exact)) == MAX_INFLATED
    for broken in (zlib.compress(b"[1, 2, 3]")[:-3], zlib.compress(b"[1]") + b"{}", b"x\x9cxx"):
        with pytest.raises(PeerError) as caught:
            FrameCompression().inflate(broken)
        assert caught.value.code == "WEBRTC_FRAME_INVALID"


MakePool = Callable[..., Awaitable[tuple[p2pdb.Collection, ReplicationPool]]]


@pytest.fixture
async def make_pool(tmp_path: Path, signaling: SignalingServer) -> AsyncIterator[MakePool]:
    made: list[tuple[p2pdb.Database, ReplicationPool]] = []

    async def make(
        name: str, compression: bool = True, **options: Any
    ) -> tuple[p2pdb.Collection, ReplicationPool]:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
        docs = await db.add_collection("docs", schema=PEER_SCHEMA)
        handler = aiortc_connection_handler(
            signaling.url, ice_servers=[], host_addresses=["127.0.0.1"], compression=compression
        )
        pool = await replicate_webrtc(docs, TOPIC, handler, **options)
        made.append((db, pool))
        return docs, pool

    yield make
    for db, pool in made:
        await pool.cancel()
        await db.close()


async def fill(docs: p2pdb.Collection, prefix: str, count: int) -> None:
    rng = random.Random(prefix)
    await docs.bulk_insert(
        [{"id": f"{prefix}{i:05d}", "text": text_of(rng, 150), "n": i} for i in range(count)]
    )


def links_of(pool: ReplicationPool) -> list[Any]:
    links = [pool.connection.link_to(peer) for peer in pool.sessions]
    assert links and all(link is not None for link in links)
    return links


@pytest.mark.parametrize(
    ("a_compresses", "b_compresses", "b_authenticates"),
    [(True, True, True), (True, False, True), (True, True, False)],
    ids=["both-accept", "one-refuses", "one-unauthenticated"],
)
async def test_two_pools_agree_and_replicate(
    make_pool: MakePool, a_compresses: bool, b_compresses: bool, b_authenticates: bool
) -> None:
    docs_a, pool_a = await make_pool("a", a_compresses)
    docs_b, pool_b = await make_pool("b", b_compresses, authenticate=b_authenticates)
    await fill(docs_a, "a-", 300)
    await fill(docs_b, "b-", 300)
    await pool_a.wait_for_first_peer()
    await wait_equal(docs_a, docs_b, seconds=30)
    await pool_a.wait_for_in_sync()
    await pool_b.wait_for_in_sync()
    assert len(await contents(docs_a)) == 600
    agreed = a_compresses and b_compresses and b_authenticates
    for pool in (pool_a, pool_b):
        (link,) = links_of(pool)
        assert link.compression.sending is agreed
        if agreed:  # each side moved 300 documents of ~1 KB: in compressed frames
            assert link.compression.counts.frames_sent > 0
            assert link.compression.counts.frames_received > 0
            counts = link.compression.counts
            assert counts.bytes_after < counts.bytes_before / 2
        else:
            assert link.compression.counts.frames_sent == 0
            assert link.compression.counts.frames_received == 0


async def test_an_unknown_method_is_not_agreed(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hellos listing only methods we do not know: plain frames, replication unchanged."""
    monkeypatch.setattr(FrameCompression, "offers", property(lambda self: ("brotli", "x" * 99)))
    docs_a, pool_a = await make_pool("a")
    docs_b, pool_b = await make_pool("b")
    await fill(docs_a, "a-", 50)
    await pool_a.wait_for_first_peer()
    await wait_equal(docs_a, docs_b, seconds=30)
    for pool in (pool_a, pool_b):
        (link,) = links_of(pool)
        assert link.compression.accept and not link.compression.sending
