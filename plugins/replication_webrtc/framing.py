"""Message framing on a WebRTC data channel, wire-compatible with RxDB 17.

Every message is one frame of JSON text (sent as a binary frame of its UTF-8, which RxDB
reads alike and for less CPU; see ``LinkChannel.send``). A message whose JSON is longer than
``max_frame_bytes`` is split into RxDB chunk frames::

    {"chunk": {"id": "<10 a-z>", "index": 0, "total": 3, "data": "<slice of the JSON text>"}}

Sending and receiving are asymmetric on purpose:

- **Sending** splits the UTF-8 JSON text at code-point borders and keeps every
  *frame* (wrapper and escaping included) at most ``max_frame_bytes`` of UTF-8.
  RxDB joins chunks of any size, and aiortc costs per SCTP packet, so fewer and
  larger frames are cheaper for us, while staying under the 64 KiB a peer may accept
  when it announces no ``max-message-size``. A peer that agreed no compression (an
  RxDB peer) gets frames of at most :data:`PLAIN_FRAME_BYTES`, RxDB's own chunk size:
  its simple-peer layer turns every *text* frame into a ``Buffer`` and back, byte by byte
  in JavaScript, which cost it more per byte in 60 KB frames than in 16 KB ones (~0.9
  against ~0.7 CPU-seconds for a 10 MB stream event). Plain frames now go as binary
  frames, which it only wraps (about 0.45 CPU-seconds less for the same stream); 60 KB
  binary frames measured no different from 16 KB ones.
- **Receiving** joins in UTF-16: RxDB slices JavaScript strings by UTF-16 code
  units, so a border may split a surrogate pair; each half arrives as a lone
  surrogate and only the joined UTF-16 sequence is valid text.

The pure parts (:func:`encode_message`, :func:`split_json`, :func:`join_chunks`,
:class:`Reassembler`) do no I/O. :class:`~.writer.ChannelWriter` (re-exported here) is the
glue that sends frames with flow control on a data channel.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, TypeAlias

import orjson

from p2pdb.errors import PeerError, ValidationError
from p2pdb.replication.limits import PeerLimits, text_too_deep
from p2pdb.tokens import random_token

from .writer import DEFAULT_HIGH_WATER_MARK, DEFAULT_LOW_WATER_MARK, ChannelWriter

__all__ = [
    "DEFAULT_HIGH_WATER_MARK",
    "DEFAULT_LOW_WATER_MARK",
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_FRAME_BYTES",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "DEFAULT_MAX_PARTIAL_MESSAGES",
    "PLAIN_FRAME_BYTES",
    "ChannelWriter",
    "JSONMessage",
    "Reassembler",
    "dump_json",
    "encode_message",
    "join_chunks",
    "parse_json",
    "split_json",
]

JSONMessage: TypeAlias = dict[str, Any] | list[Any]
"""A message on the data channel: a parsed JSON object or array."""

DEFAULT_MAX_FRAME_BYTES = 60 * 1024
"""Largest frame we send, in bytes of UTF-8 (64 KiB is the default peer limit)."""
PLAIN_FRAME_BYTES = 16 * 1024
"""Largest uncompressed frame we send to a peer that agreed no compression (RxDB's own
chunk size, ``SIMPLE_PEER_MAX_MESSAGE_LENGTH``; see the module docstring)."""
DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
"""Largest amount of chunk data buffered per peer, in characters."""
DEFAULT_MAX_PARTIAL_MESSAGES = 32
"""Most chunked messages a peer may have half-sent at once."""
DEFAULT_MAX_DEPTH = PeerLimits().max_depth
"""Deepest nesting of objects and arrays a peer's message may have."""

_CHUNK_ID_MAX_LENGTH = 100
_MIN_CHUNK_CHARS = 256  # a message may have at most max_message_size / this many chunks


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(text: str | bytes) -> Any:
    """Parse JSON text strictly (no NaN/Infinity).

    Uses orjson; falls back to the standard library only for what orjson refuses
    but JavaScript produces: escaped lone surrogates (``"\\ud83d"``), which
    ``JSON.stringify`` writes for a string cut inside a surrogate pair.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        if isinstance(text, bytes):
            text = text.decode("utf-8")  # may raise UnicodeDecodeError (a ValueError)
        try:
            return json.loads(text, parse_constant=_reject_constant)
        except RecursionError:  # callers check the depth first; this is the last guard
            raise ValueError("JSON nested too deep to parse") from None


def dump_json(message: object) -> bytes:
    """Serialize ``message`` to compact UTF-8 JSON.

    Strings holding lone surrogates (which orjson refuses) are written as
    ``\\uXXXX`` escapes, as JavaScript does. Raises :class:`ValidationError`
    (``WEBRTC_MESSAGE_NOT_JSON``) if the value is not JSON-serializable.
    """
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError as orjson_error:
        try:
            text = json.dumps(message, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as error:
            raise ValidationError(
                f"A message for a peer must be JSON-serializable: {orjson_error}",
                code="WEBRTC_MESSAGE_NOT_JSON",
            ) from error
        return text.encode("ascii")


def _escaped_size(piece: bytes) -> int:
    """Bytes that ``piece`` (compact JSON text) takes inside a JSON string literal.

    Compact JSON text holds no raw control characters, so only ``"`` and ``\\``
    grow (to two bytes each).
    """
    return len(piece) + piece.count(b'"') + piece.count(b"\\")


def _code_point_start(data: bytes, end: int) -> int:
    """Move ``end`` back until it does not fall inside a UTF-8 sequence."""
    while 0 < end < len(data) and data[end] & 0xC0 == 0x80:
        end -= 1
    return end


def split_json(text: bytes, chunk_id: str, max_frame_bytes: int) -> list[str]:
    """Split UTF-8 JSON ``text`` into RxDB chunk frames of at most ``max_frame_bytes``.

    Borders fall on code points; sizes are measured on the serialized frame.
    """
    overhead = len(
        orjson.dumps(
            {"chunk": {"id": chunk_id, "index": len(text), "total": len(text), "data": ""}}
        )
    )
    budget = max_frame_bytes - overhead
    if budget < 8:
        raise ValidationError(
            f"max_frame_bytes={max_frame_bytes} leaves no room for chunk data",
            code="WEBRTC_SETTING_INVALID",
        )
    pieces: list[str] = []
    pos = 0
    while pos < len(text):
        end = _code_point_start(text, min(pos + budget, len(text)))
        while (excess := _escaped_size(text[pos:end]) - budget) > 0:
            # Each dropped byte saves 1 or 2 escaped bytes: drop at least half the excess.
            end = _code_point_start(text, end - (excess + 1) // 2)
        pieces.append(text[pos:end].decode("utf-8"))
        pos = end
    total = len(pieces)
    return [
        orjson.dumps(
            {"chunk": {"id": chunk_id, "index": index, "total": total, "data": data}}
        ).decode("utf-8")
        for index, data in enumerate(pieces)
    ]


def encode_message(
    message: object,
    *,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    chunk_id_factory: Callable[[], str] = lambda: random_token(10),
) -> list[str]:
    """Turn a JSON-serializable ``message`` into the text frames to send, in order."""
    text = dump_json(message)
    if len(text) <= max_frame_bytes:
        return [text.decode("utf-8")]
    return split_json(text, chunk_id_factory(), max_frame_bytes)


def join_chunks(parts: Sequence[str]) -> str:
    """Join chunk data as RxDB sliced it: by UTF-16 code units.

    Raises :class:`UnicodeDecodeError` if the joined text still holds a lone
    surrogate that is not escaped (not JSON any more).
    """
    joined = "".join(parts)
    if joined.isascii():
        return joined
    return joined.encode("utf-16-le", "surrogatepass").decode("utf-16-le")


def _frame_error(message: str, **parameters: Any) -> PeerError:
    return PeerError(message, code="WEBRTC_FRAME_INVALID", **parameters)


def _chunk_error(message: str, **parameters: Any) -> PeerError:
    return PeerError(message, code="WEBRTC_CHUNK_INVALID", **parameters)


class _Partial:
    __slots__ = ("parts", "size", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.parts: dict[int, str] = {}
        self.size = 0


class Reassembler:
    """Turns received frames of one peer back into messages.

    :meth:`feed` returns the message a frame completes, or ``None`` while a
    chunked message is incomplete. Hostile input raises :class:`PeerError`:

    - ``WEBRTC_FRAME_INVALID``: not JSON, or not an object/array.
    - ``WEBRTC_CHUNK_INVALID``: bad chunk fields (types, index out of range,
      ``total`` changing, a repeated index, text that is not UTF-16 once joined).
    - ``WEBRTC_MESSAGE_TOO_LARGE``: buffered chunk data over ``max_message_size``.
    - ``WEBRTC_TOO_MANY_PARTIAL_MESSAGES``: more than ``max_partial_messages``
      chunked messages in flight.
    - ``WEBRTC_PEER_OVER_LIMIT`` (``limit="max_depth"``): a message nesting objects and
      arrays deeper than ``max_depth``, found on its text before it is parsed.

    After an error the caller should drop the peer; the state is not reset.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_partial_messages: int = DEFAULT_MAX_PARTIAL_MESSAGES,
        max_depth: int = DEFAULT_MAX_DEPTH,
    ) -> None:
        self._max_message_size = max_message_size
        self._max_depth = max_depth
        self._max_partial_messages = max_partial_messages
        self._max_chunks = max(1024, max_message_size // _MIN_CHUNK_CHARS)
        self._partials: dict[str, _Partial] = {}
        self._buffered = 0

    @property
    def buffered(self) -> int:
        """Characters of chunk data currently held for incomplete messages."""
        return self._buffered

    @property
    def pending(self) -> int:
        """Number of incomplete chunked messages."""
        return len(self._partials)

    def clear(self) -> None:
        """Forget every incomplete message."""
        self._partials.clear()
        self._buffered = 0

    def feed(self, frame: str | bytes) -> JSONMessage | None:
        """Process one received frame; return a completed message or ``None``."""
        try:
            value = orjson.loads(frame)  # no Python recursion; refuses past 1024 levels
        except orjson.JSONDecodeError:
            self._check_depth(frame)  # before the recursive fallback of parse_json
            try:
                value = parse_json(frame)
            except ValueError as error:
                raise _frame_error(f"A peer sent a frame that is not JSON: {error}") from error
        if isinstance(value, dict):
            chunk = value.get("chunk")
            if chunk:  # RxDB's test: a truthy `chunk` field makes a chunk frame
                return self._feed_chunk(chunk)  # its data is checked once joined
        if isinstance(value, dict | list):
            self._check_depth(frame)  # a whole message, before anything recursive
            return value
        raise _frame_error(
            f"A peer sent a JSON {type(value).__name__}; messages must be objects or arrays"
        )

    def _check_depth(self, text: str | bytes) -> None:
        if text_too_deep(text, self._max_depth):
            raise PeerError(
                f"A peer sent a message nested deeper than {self._max_depth}",
                code="WEBRTC_PEER_OVER_LIMIT",
                limit="max_depth",
            )

    def _feed_chunk(self, chunk: object) -> JSONMessage | None:
        if not isinstance(chunk, dict):
            raise _chunk_error("A chunk frame's `chunk` field must be an object")
        chunk_id = chunk.get("id")
        index = chunk.get("index")
        total = chunk.get("total")
        data = chunk.get("data")
        if not isinstance(chunk_id, str) or not 0 < len(chunk_id) <= _CHUNK_ID_MAX_LENGTH:
            raise _chunk_error(
                f"A chunk id must be a string of 1-{_CHUNK_ID_MAX_LENGTH} characters"
            )
        if type(total) is not int or not 1 <= total <= self._max_chunks:
            raise _chunk_error(
                f"A chunk's total must be an integer in 1..{self._max_chunks}, got {total!r}",
                chunk_id=chunk_id,
            )
        if type(index) is not int or not 0 <= index < total:
            raise _chunk_error(
                f"A chunk's index must be an integer in 0..{total - 1}, got {index!r}",
                chunk_id=chunk_id,
            )
        if not isinstance(data, str):
            raise _chunk_error("A chunk's data must be a string", chunk_id=chunk_id)

        partial = self._partials.get(chunk_id)
        if partial is None:
            if len(self._partials) >= self._max_partial_messages:
                raise PeerError(
                    f"A peer has more than {self._max_partial_messages} chunked messages in flight",
                    code="WEBRTC_TOO_MANY_PARTIAL_MESSAGES",
                    limit=self._max_partial_messages,
                )
            partial = _Partial(total)
            self._partials[chunk_id] = partial
        elif partial.total != total:
            raise _chunk_error(
                f"Chunk {chunk_id!r} changed its total from {partial.total} to {total}",
                chunk_id=chunk_id,
            )
        if index in partial.parts:
            raise _chunk_error(
                f"Chunk {chunk_id!r} sent index {index} twice", chunk_id=chunk_id, index=index
            )
        if self._buffered + len(data) > self._max_message_size:
            raise PeerError(
                f"A peer's chunked messages exceed {self._max_message_size} characters",
                code="WEBRTC_MESSAGE_TOO_LARGE",
                limit=self._max_message_size,
            )
        partial.parts[index] = data
        partial.size += len(data)
        self._buffered += len(data)
        if len(partial.parts) < partial.total:
            return None

        del self._partials[chunk_id]
        self._buffered -= partial.size
        parts = [partial.parts[i] for i in range(partial.total)]
        try:
            text = join_chunks(parts)
            self._check_depth(text)
            value = parse_json(text)
        except ValueError as error:  # UnicodeError and JSONDecodeError are ValueErrors
            raise _chunk_error(
                f"Chunked message {chunk_id!r} is not JSON once joined: {error}",
                chunk_id=chunk_id,
            ) from error
        if not isinstance(value, dict | list):
            raise _frame_error(
                f"A peer sent a JSON {type(value).__name__}; messages must be objects or arrays"
            )
        return value
