"""zlib on data-channel frames, between p2pdb peers that both accept it.

RxDB's frames are JSON text; a p2pdb peer may also send a **binary frame holding a zlib
stream** (RFC 1950: its first byte is ``0x78``, which no JSON text starts with) whose content
is a whole message, or consecutive RxDB chunk frames of one chunked message separated by
newlines (compact JSON holds none): as many as make a compressed frame of a useful size
(aiortc's cost is per message). Each frame inflates to at most :data:`MAX_INFLATED` bytes.

Negotiation rides on the p2pdb handshake (:mod:`.handshake`): a hello lists
``"compress": ["zlib"]`` when its side accepts compressed frames. A side sends them only
after the other side's hello listed it, so an RxDB peer (no hello) and a p2pdb peer that
switched compression off always get plain frames (binary UTF-8 JSON). A side that accepts
decompresses from the first frame on (its acceptance is what lets the other side start).

Only messages of at least :data:`MIN_BYTES` of JSON are compressed (a smaller one fits one
SCTP packet anyway), and a frame is sent compressed only when that makes it smaller.

Hostile input: a frame that inflates past :data:`MAX_INFLATED` (a zip bomb) raises
``WEBRTC_MESSAGE_TOO_LARGE`` after inflating at most that much; a broken stream raises
``WEBRTC_FRAME_INVALID``. Both are :class:`~p2pdb.errors.PeerError`, and the link drops the
peer, as for any bad frame.
"""

from __future__ import annotations

import zlib
from collections.abc import Collection
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from p2pdb.errors import PeerError
from p2pdb.tokens import random_token

from .framing import JSONMessage, Reassembler, dump_json, split_json
from .peer import Peer

__all__ = [
    "LEVEL",
    "MAX_INFLATED",
    "MIN_BYTES",
    "ZLIB",
    "CompressionCounts",
    "FrameCompression",
    "LinkLookup",
]

#: The name of the one method, as hellos list it.
ZLIB = "zlib"
#: Messages with less JSON than this are sent as they are (about one SCTP packet).
MIN_BYTES = 1200
#: The most one compressed frame may inflate to (the receiver's bound; senders keep to it).
MAX_INFLATED = 1024 * 1024
#: zlib level: 1 costs a quarter of the default's CPU for most of its gain on JSON.
LEVEL = 1
_ZLIB_FIRST_BYTE = 0x78  # CMF of deflate with a 32 KiB window: what zlib.compress writes


@dataclass
class CompressionCounts:
    """What one link's compression did (for tests and benchmarks)."""

    frames_sent: int = 0
    """Compressed frames sent."""
    bytes_before: int = 0
    """Text bytes those frames held."""
    bytes_after: int = 0
    """Bytes of those frames on the wire."""
    frames_received: int = 0
    """Compressed frames received and inflated."""


class FrameCompression:
    """One link's compression: what it accepts, whether it sends compressed frames.

    ``accept``: decompress the peer's compressed frames, and offer compression in our
    hello (the connection handler's ``compression`` option). :meth:`agree` turns sending
    on once the peer's hello offered it too."""

    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.sending = False
        self.counts = CompressionCounts()

    @property
    def offers(self) -> tuple[str, ...]:
        """The methods our hello lists: ``("zlib",)`` or ``()``."""
        return (ZLIB,) if self.accept else ()

    def agree(self, offered: Collection[str]) -> bool:
        """The peer's hello listed ``offered``: send compressed frames if both accept
        zlib. Returns whether we now do."""
        if self.accept and ZLIB in offered:
            self.sending = True
        return self.sending

    def encode(self, message: object, max_frame_bytes: int) -> list[str | bytes] | None:
        """The frames for ``message`` when we send compressed frames (zlib frames for a
        message large enough, text frames otherwise); ``None`` when we do not (the caller
        uses :func:`.framing.encode_message`)."""
        if not self.sending:
            return None
        text = dump_json(message)
        if len(text) < MIN_BYTES:
            if len(text) <= max_frame_bytes:
                return [text.decode("utf-8")]
            return list(split_json(text, random_token(10), max_frame_bytes))
        if len(text) <= MAX_INFLATED:
            whole = zlib.compress(text, LEVEL)
            if len(whole) <= max_frame_bytes:
                self._count(len(text), len(whole))
                return [whole]
        # too large for one frame even compressed: RxDB chunk frames, a few of them per
        # compressed frame (newline-separated), so that compressed frames are not tiny:
        # aiortc's cost is per message, and an urgent message waits behind all of them
        chunks = [c.encode("utf-8") for c in split_json(text, random_token(10), max_frame_bytes)]
        ratio = len(zlib.compress(chunks[0], LEVEL)) / len(chunks[0])
        per_frame = max(1, min(int(0.8 / max(ratio, 1e-3)), MAX_INFLATED // (max_frame_bytes + 1)))
        frames: list[str | bytes] = []
        for start in range(0, len(chunks), per_frame):
            frames.extend(self._pack(chunks[start : start + per_frame], max_frame_bytes))
        return frames

    def _pack(self, group: list[bytes], max_frame_bytes: int) -> list[str | bytes]:
        raw = b"\n".join(group)
        packed = zlib.compress(raw, LEVEL)
        if len(packed) <= max_frame_bytes and len(packed) < len(raw):
            self._count(len(raw), len(packed))
            return [packed]
        if len(group) > 1:  # compressed less than the first chunk did: halve the group
            half = len(group) // 2
            return self._pack(group[:half], max_frame_bytes) + self._pack(
                group[half:], max_frame_bytes
            )
        return [group[0].decode("utf-8")]  # a chunk that does not compress: as it is

    def _count(self, before: int, after: int) -> None:
        self.counts.frames_sent += 1
        self.counts.bytes_before += before
        self.counts.bytes_after += after

    def feed(self, reassembler: Reassembler, frame: str | bytes) -> JSONMessage | None:
        """Feed a received frame to ``reassembler`` (a compressed one inflated, each text
        frame it holds in turn); return the message it completed, if any. Raises
        :class:`PeerError` on a bad compressed frame, or one completing two messages."""
        text = self.inflate(frame)
        if text is frame or isinstance(text, str):
            return reassembler.feed(frame)
        message: JSONMessage | None = None
        for part in text.split(b"\n"):
            if message is not None:
                raise PeerError(
                    "A peer sent a compressed frame holding more than one message",
                    code="WEBRTC_FRAME_INVALID",
                )
            message = reassembler.feed(part)
        return message

    def inflate(self, frame: str | bytes) -> str | bytes:
        """A received frame inflated if it is compressed and we accept compressed frames
        (then: the text of one or more frames, newline-separated), else ``frame`` itself.
        Raises :class:`PeerError` on a bad compressed frame."""
        if not self.accept or isinstance(frame, str) or not frame:
            return frame
        if frame[0] != _ZLIB_FIRST_BYTE:
            return frame
        inflater = zlib.decompressobj()
        try:
            text = inflater.decompress(frame, MAX_INFLATED)
            if not inflater.eof and (inflater.unconsumed_tail or len(text) >= MAX_INFLATED):
                # more output than MAX_INFLATED, and we stopped there: a zip bomb
                raise PeerError(
                    f"A peer sent a compressed frame inflating past {MAX_INFLATED} bytes",
                    code="WEBRTC_MESSAGE_TOO_LARGE",
                    limit=MAX_INFLATED,
                )
            if not inflater.eof or inflater.unused_data:
                raise zlib.error("the zlib stream is truncated or followed by other bytes")
        except zlib.error as error:
            raise PeerError(
                f"A peer sent a compressed frame that does not inflate: {error}",
                code="WEBRTC_FRAME_INVALID",
            ) from error
        self.counts.frames_received += 1
        return text


@runtime_checkable
class LinkLookup(Protocol):
    """What finds the compression of a peer's channel (``ConnectionHandler`` and a pool's
    ``CollectionPort``): how the handshake reaches the compression it negotiates for."""

    def compression_for(self, peer: Peer) -> FrameCompression | None:
        """The compression of the open channel to ``peer``, if any."""
        ...
