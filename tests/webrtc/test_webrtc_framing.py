"""Chunk split/join (pure) and flow-controlled sending (with a fake channel)."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pdb.errors import PeerError, ValidationError
from p2pdb.plugins.replication_webrtc.framing import (
    ChannelWriter,
    Reassembler,
    dump_json,
    encode_message,
    join_chunks,
    split_json,
)
from p2pdb.replication.lanes import URGENT_SEND

RXDB_CHUNK_UNITS = 16384  # SIMPLE_PEER_MAX_MESSAGE_LENGTH, in UTF-16 code units


def js_stringify(value: Any) -> str:
    """JSON.stringify: compact, non-ASCII kept, lone surrogates escaped (ES2019)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return re.sub(r"[\ud800-\udfff]", lambda m: f"\\u{ord(m.group()):04x}", text)


def rxdb_chunk_frames(message: Any, chunk_id: str = "rxdbchunkx") -> list[str]:
    """Chunk frames exactly as RxDB's simple-peer handler builds them (UTF-16 slices)."""
    units = js_stringify(message).encode("utf-16-le", "surrogatepass")
    size = RXDB_CHUNK_UNITS * 2
    slices = [
        units[pos : pos + size].decode("utf-16-le", "surrogatepass")
        for pos in range(0, len(units), size)
    ]
    return [
        js_stringify({"chunk": {"id": chunk_id, "index": i, "total": len(slices), "data": s}})
        for i, s in enumerate(slices)
    ]


def feed_all(frames: list[str], reassembler: Reassembler | None = None) -> Any:
    reassembler = reassembler or Reassembler()
    results = [reassembler.feed(frame) for frame in frames]
    assert all(result is None for result in results[:-1])
    assert reassembler.pending == 0 and reassembler.buffered == 0
    return results[-1]


def test_small_message_is_one_plain_frame() -> None:
    assert encode_message({"id": "1", "method": "token", "params": []}) == [
        '{"id":"1","method":"token","params":[]}'
    ]


def test_large_message_round_trips_with_frames_under_the_limit() -> None:
    message = {"documents": [{"id": str(i), "text": "ü€😀" * 300, "q": '"\\'} for i in range(300)]}
    frames = encode_message(message, max_frame_bytes=60 * 1024)
    assert len(frames) > 3
    for frame in frames:
        assert len(frame.encode("utf-8")) <= 60 * 1024
        chunk = orjson.loads(frame)["chunk"]
        assert chunk["total"] == len(frames)
    assert feed_all(frames) == message


def test_frames_stay_under_the_limit_when_escaping_doubles_the_size() -> None:
    message = ['"' * 50_000, "\\" * 50_000]
    frames = encode_message(message, max_frame_bytes=2000)
    assert max(len(frame.encode()) for frame in frames) <= 2000
    assert feed_all(frames) == message


def test_chunks_from_rxdb_that_split_surrogate_pairs_are_joined_in_utf16() -> None:
    # 16383 ASCII units, then emoji: the first border falls inside a surrogate pair.
    message = {"text": "a" * (RXDB_CHUNK_UNITS - len('{"text":"') - 1) + "😀" * 20_000}
    frames = rxdb_chunk_frames(message)
    datas = [json.loads(frame)["chunk"]["data"] for frame in frames]
    assert len(frames) == 4
    assert any("\ud800" <= data[-1] <= "\udbff" for data in datas[:-1]), "no split pair"
    with pytest.raises(UnicodeEncodeError):
        "".join(datas).encode("utf-8")  # a naive join leaves lone surrogates
    assert feed_all(frames) == message


def test_rxdb_chunks_may_arrive_in_any_order_and_interleaved() -> None:
    first = {"a": "😀" * 20_000}
    second = ["ü" * 40_000]
    frames_1 = rxdb_chunk_frames(first, "aaaaaaaaaa")
    frames_2 = rxdb_chunk_frames(second, "bbbbbbbbbb")
    reassembler = Reassembler()
    assert reassembler.feed(frames_1[2]) is None
    assert reassembler.feed(frames_2[0]) is None
    assert reassembler.feed(frames_1[0]) is None
    assert reassembler.pending == 2
    assert reassembler.feed(frames_2[1]) is None
    assert reassembler.feed(frames_2[2]) == second
    assert reassembler.feed(frames_1[1]) == first


def test_plain_frames_are_returned_as_is() -> None:
    reassembler = Reassembler()
    assert reassembler.feed('{"id":"x","result":null}') == {"id": "x", "result": None}
    assert reassembler.feed(b'[1,"\xc3\xbc"]') == [1, "ü"]
    assert reassembler.feed('{"chunk":0,"id":1}') == {"chunk": 0, "id": 1}  # falsy chunk: plain
    assert reassembler.feed('{"s":"\\ud83d"}') == {"s": "\ud83d"}  # lone surrogate escape


def test_dump_json_escapes_lone_surrogates_like_javascript() -> None:
    assert dump_json({"s": "\ud83d"}) == b'{"s":"\\ud83d"}'
    with pytest.raises(ValidationError) as info:
        dump_json({"s": {1, 2}})
    assert info.value.code == "WEBRTC_MESSAGE_NOT_JSON"


@settings(max_examples=60, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(),
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=8), children, max_size=5)
        ),
        max_leaves=15,
    ),
    max_frame_bytes=st.integers(min_value=120, max_value=400),
)
def test_split_join_round_trip(value: Any, max_frame_bytes: int) -> None:
    message = {"v": value}
    frames = encode_message(message, max_frame_bytes=max_frame_bytes)
    assert all(len(frame.encode("utf-8")) <= max_frame_bytes for frame in frames)
    assert feed_all(frames) == message


@settings(max_examples=60, deadline=None)
@given(text=st.text(min_size=1), cut=st.integers(min_value=1, max_value=40))
def test_utf16_slices_of_any_size_rejoin(text: str, cut: int) -> None:
    units = text.encode("utf-16-le")
    parts = [
        units[pos : pos + 2 * cut].decode("utf-16-le", "surrogatepass")
        for pos in range(0, len(units), 2 * cut)
    ]
    assert join_chunks(parts) == text


def test_split_json_rejects_a_limit_without_room_for_data() -> None:
    with pytest.raises(ValidationError) as info:
        split_json(b'"' + b"x" * 100 + b'"', "abcdefghij", 40)
    assert info.value.code == "WEBRTC_SETTING_INVALID"


def chunk(id: Any = "abcdefghij", index: Any = 0, total: Any = 2, data: Any = "[") -> str:
    return json.dumps({"chunk": {"id": id, "index": index, "total": total, "data": data}})


@pytest.mark.parametrize(
    ("frames", "code"),
    [
        (["{not json"], "WEBRTC_FRAME_INVALID"),
        ([b"\xff"], "WEBRTC_FRAME_INVALID"),
        (["NaN"], "WEBRTC_FRAME_INVALID"),
        (["42"], "WEBRTC_FRAME_INVALID"),
        (['"text"'], "WEBRTC_FRAME_INVALID"),
        (['{"chunk": [1]}'], "WEBRTC_CHUNK_INVALID"),
        ([chunk(id="")], "WEBRTC_CHUNK_INVALID"),
        ([chunk(id=5)], "WEBRTC_CHUNK_INVALID"),
        ([chunk(id="x" * 101)], "WEBRTC_CHUNK_INVALID"),
        ([chunk(index=-1)], "WEBRTC_CHUNK_INVALID"),
        ([chunk(index=2)], "WEBRTC_CHUNK_INVALID"),
        ([chunk(index=1.0)], "WEBRTC_CHUNK_INVALID"),
        ([chunk(index="1")], "WEBRTC_CHUNK_INVALID"),
        ([chunk(index=True)], "WEBRTC_CHUNK_INVALID"),
        ([chunk(index=None)], "WEBRTC_CHUNK_INVALID"),
        ([chunk(total=0, index=0)], "WEBRTC_CHUNK_INVALID"),
        ([chunk(total=2.5)], "WEBRTC_CHUNK_INVALID"),
        ([chunk(total=10**12)], "WEBRTC_CHUNK_INVALID"),
        ([chunk(data=None)], "WEBRTC_CHUNK_INVALID"),
        ([chunk(total=3), chunk(index=1, total=2)], "WEBRTC_CHUNK_INVALID"),  # total changes
        ([chunk(total=3), chunk(index=0, total=3)], "WEBRTC_CHUNK_INVALID"),  # repeated index
        ([chunk(index=0, data="{x"), chunk(index=1, data="}")], "WEBRTC_CHUNK_INVALID"),
        ([chunk(index=0, data='"\ud83d'), chunk(index=1, data='"')], "WEBRTC_CHUNK_INVALID"),
        ([chunk(index=0, data="1"), chunk(index=1, data="2")], "WEBRTC_FRAME_INVALID"),
    ],
)
def test_hostile_frames_raise_typed_errors(frames: list[Any], code: str) -> None:
    reassembler = Reassembler()
    with pytest.raises(PeerError) as info:
        for frame in frames:
            reassembler.feed(frame)
    assert info.value.code == code


def test_too_many_partial_messages() -> None:
    reassembler = Reassembler(max_partial_messages=3)
    for n in range(3):
        assert reassembler.feed(chunk(id=f"id{n}")) is None
    with pytest.raises(PeerError) as info:
        reassembler.feed(chunk(id="id3"))
    assert info.value.code == "WEBRTC_TOO_MANY_PARTIAL_MESSAGES"


def test_buffered_chunk_data_is_capped() -> None:
    reassembler = Reassembler(max_message_size=1000)
    assert reassembler.feed(chunk(id="a", total=5, data="x" * 600)) is None
    with pytest.raises(PeerError) as info:
        reassembler.feed(chunk(id="b", total=5, data="x" * 600))
    assert info.value.code == "WEBRTC_MESSAGE_TOO_LARGE"


class FakeChannel:
    """Buffers like aiortc: bufferedAmount grows on send and shrinks on drain."""

    def __init__(self) -> None:
        self.bufferedAmount = 0
        self.bufferedAmountLowThreshold = 0
        self.readyState = "open"
        self.sent: list[str] = []
        self.writer: ChannelWriter | None = None

    def send(self, data: bytes | str) -> None:
        assert isinstance(data, str)
        self.sent.append(data)
        self.bufferedAmount += len(data.encode())

    def drain(self) -> None:
        crossed = self.bufferedAmount > self.bufferedAmountLowThreshold
        self.bufferedAmount = 0
        if crossed and self.writer is not None:
            self.writer.notify_low()


async def test_writer_waits_above_the_high_water_mark_and_interleaves() -> None:
    channel = FakeChannel()
    writer = ChannelWriter(channel, high_water_mark=250, low_water_mark=100)
    channel.writer = writer
    assert channel.bufferedAmountLowThreshold == 100
    big = asyncio.create_task(writer.send_frames(["b" * 100] * 20))
    await asyncio.sleep(0)
    assert len(channel.sent) == 3  # 300 bytes buffered > 250: waiting
    small = asyncio.create_task(writer.send_frames(["s"]))
    await asyncio.sleep(0)
    assert not small.done() and len(channel.sent) == 3  # no overtaking a full buffer
    channel.drain()
    await small
    assert not big.done()  # the small message got in between the big one's frames
    assert channel.sent.index("s") == 6
    while not big.done():
        assert channel.bufferedAmount <= 250 + 100
        channel.drain()
        await asyncio.sleep(0)
    await big
    assert channel.sent.count("b" * 100) == 20


async def test_writer_gauge_counts_in_order_bytes_and_what_left_the_buffer() -> None:
    channel = FakeChannel()
    writer = ChannelWriter(channel, high_water_mark=10_000, low_water_mark=0)
    await writer.send_frames(["ab", "cdé"])  # bytes as the channel buffers them (UTF-8)
    assert (writer.handed(), writer.flushed()) == (6, 0)
    token = URGENT_SEND.set(True)
    try:
        await writer.send_frames(["urgent"])
    finally:
        URGENT_SEND.reset(token)
    # an urgent frame is not counted as handed, and while it is buffered, in-order bytes
    # count as not flushed (it may sit behind them or ahead): a lower bound
    assert (writer.handed(), writer.flushed()) == (6, -6)
    channel.drain()
    assert (writer.handed(), writer.flushed()) == (6, 6)


async def test_writer_fails_waiting_and_later_sends_after_close() -> None:
    channel = FakeChannel()
    writer = ChannelWriter(channel, high_water_mark=10, low_water_mark=0, peer_id="p")
    waiting = asyncio.create_task(writer.send_frames(["x" * 20, "y"]))
    await asyncio.sleep(0)
    writer.close()
    with pytest.raises(PeerError) as info:
        await waiting
    assert info.value.code == "WEBRTC_PEER_GONE"
    with pytest.raises(PeerError):
        await writer.send_frames(["z"])


async def test_writer_reports_a_closed_channel() -> None:
    channel = FakeChannel()
    channel.readyState = "closed"
    with pytest.raises(PeerError) as info:
        await ChannelWriter(channel).send_frames(["x"])
    assert info.value.code == "WEBRTC_PEER_GONE"
