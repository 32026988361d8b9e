"""Protected signaling: a topic secret hides the room name and seals every signal.

From ``secret`` and ``topic``, :func:`derive_signal_keys` computes (once per handler) a
32-byte master key, then two keys with HKDF-SHA256. The master key comes from:

- HKDF-SHA256 (the default, microseconds): for a high-entropy secret, at least 16
  characters (say ``p2pdb.tokens.random_token(32)`` handed out with the topic). Shorter
  secrets are refused (``WEBRTC_SECRET_INVALID``): whoever sees the hashed room name (the
  signaling server) could test guesses of a short one offline at billions per second;
- scrypt (``TopicSecret(password, kdf="scrypt")``; n=2**14, r=8, p=1: 40-60 ms and 16 MiB,
  run in a thread) for a secret people type: each guess then costs an attacker as much.

Both sides must use the same kind (otherwise they land in different rooms and never meet).
The derived keys are:

- the **room key**: the server sees only ``"p2pdb-s1-" + hex(HMAC-SHA256(room key, topic))``;
- the **signal key**: every signal payload (SDP offers and answers, ICE candidates) travels as
  ``{"type": "p2pdb-sealed", "ts", "nonce", "box"}``, AES-256-GCM with a random 96-bit nonce
  and, as associated data, the hashed room, the sender's and the receiver's signaling ids,
  the ``connectionId`` and the timestamp. A frame replayed into another room, to another peer
  or for another connection attempt fails authentication.

:class:`SignalSealer` also rejects frames whose timestamp is more than ``window`` seconds away
from our clock (``WEBRTC_SIGNAL_STALE``) and any nonce seen within the window
(``WEBRTC_SIGNAL_REPLAYED``), remembering at most ``max_remembered`` nonces: when full, it
forgets the oldest and refuses everything not newer than it, so memory stays bounded and a
forgotten frame can never come back. ``cryptography`` is imported only when a secret is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from p2pdb.errors import PeerError, ValidationError

__all__ = [
    "MIN_FAST_SECRET",
    "ROOM_PREFIX",
    "SEALED_TYPE",
    "DropLog",
    "SignalKeys",
    "SignalSealer",
    "TopicSecret",
    "check_secret",
    "derive_signal_keys",
]

SEALED_TYPE = "p2pdb-sealed"
"""The ``data.type`` of a sealed signal."""
ROOM_PREFIX = "p2pdb-s1-"
"""The start of every hashed room name."""
_VERSION = "p2pdb-signal/1"
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_NONCE_BYTES = 12
MIN_FAST_SECRET = 16
"""The shortest secret (in bytes) accepted without scrypt."""


@dataclass(frozen=True)
class TopicSecret:
    """A topic secret with its key derivation: ``kdf="hkdf"`` (fast, for a random secret of
    at least 16 characters: what a plain ``str``/``bytes`` secret means) or ``"scrypt"``
    (tens of milliseconds once per handler, for a secret people type)."""

    value: str | bytes = field(repr=False)
    kdf: Literal["hkdf", "scrypt"] = "hkdf"

    def __post_init__(self) -> None:
        raw = self.value.encode("utf-8") if isinstance(self.value, str) else self.value
        if not isinstance(raw, bytes) or not raw:
            raise ValidationError(
                "A topic secret must be a non-empty str or bytes", code="WEBRTC_SECRET_INVALID"
            )
        if self.kdf not in ("hkdf", "scrypt"):
            raise ValidationError(
                f"kdf must be 'hkdf' or 'scrypt', got {self.kdf!r}", code="WEBRTC_SECRET_INVALID"
            )
        if self.kdf == "hkdf" and len(raw) < MIN_FAST_SECRET:
            raise ValidationError(
                f"A topic secret shorter than {MIN_FAST_SECRET} bytes is guessable from the "
                "hashed room name: use a long random one (p2pdb.tokens.random_token(32)) or "
                "TopicSecret(secret, kdf='scrypt')",
                code="WEBRTC_SECRET_INVALID",
            )

    @property
    def raw(self) -> bytes:
        """The secret's bytes."""
        return self.value.encode("utf-8") if isinstance(self.value, str) else self.value


@dataclass(frozen=True, repr=False)
class SignalKeys:
    """The keys derived from a topic secret (``repr`` shows the room only)."""

    room: str
    """The room name the signaling server sees."""
    signal_key: bytes
    """The AES-256-GCM key of the signal payloads."""

    def __repr__(self) -> str:
        return f"SignalKeys(room={self.room!r})"


def derive_signal_keys(secret: str | bytes | TopicSecret, topic: str) -> SignalKeys:
    """The hashed room and the signal key of ``topic`` under ``secret``.

    With ``kdf="scrypt"`` it is slow on purpose (tens of milliseconds): call it off the
    event loop.
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF, HKDFExpand
    from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

    spec = check_secret(secret)
    salt = b"p2pdb-signal-v1\x00" + topic.encode("utf-8")
    if spec.kdf == "scrypt":
        scrypt = Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
        master = scrypt.derive(spec.raw)
    else:
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=b"p2pdb-signal-v1")
        master = hkdf.derive(spec.raw)

    def expand(info: bytes) -> bytes:
        return HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(master)

    room_key = expand(b"p2pdb-signal-v1 room")
    digest = hmac.new(room_key, topic.encode("utf-8"), hashlib.sha256).hexdigest()
    return SignalKeys(room=ROOM_PREFIX + digest, signal_key=expand(b"p2pdb-signal-v1 seal"))


def check_secret(secret: object) -> TopicSecret:
    """``secret`` as a :class:`TopicSecret` (a ``str`` or ``bytes`` means ``kdf="hkdf"``);
    raises ``WEBRTC_SECRET_INVALID``."""
    if isinstance(secret, TopicSecret):
        return secret
    if not isinstance(secret, str | bytes):
        raise ValidationError(
            "A topic secret must be a non-empty str or bytes, or a TopicSecret",
            code="WEBRTC_SECRET_INVALID",
        )
    return TopicSecret(secret)


@dataclass
class SignalSealer:
    """Seals outgoing and opens incoming signal payloads of one room (one per client)."""

    keys: SignalKeys
    window: float = 60.0
    """Seconds a frame's timestamp may be away from our clock."""
    max_remembered: int = 4096
    """Nonces remembered against replays (bounded memory)."""
    _seen: dict[bytes, int] = field(default_factory=dict, repr=False)  # nonce -> ts, in order
    _floor: int = field(default=-1, repr=False)  # frames at or before this ts are refused

    @property
    def remembered(self) -> int:
        """How many nonces are remembered now (at most ``max_remembered``)."""
        return len(self._seen)

    def seal(
        self,
        data: object,
        *,
        sender: str,
        receiver: str,
        connection_id: str | None,
        now: float | None = None,
    ) -> dict[str, Any]:
        """The sealed form of the signal payload ``data`` (a JSON value)."""
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        ts = int((time.time() if now is None else now) * 1000)
        nonce = os.urandom(_NONCE_BYTES)
        aad = self._aad(sender, receiver, connection_id, ts)
        box = AESGCM(self.keys.signal_key).encrypt(nonce, orjson.dumps(data), aad)
        return {"type": SEALED_TYPE, "ts": ts, "nonce": _b64(nonce), "box": _b64(box)}

    def open(
        self,
        data: object,
        *,
        sender: str,
        receiver: str,
        connection_id: object,
        now: float | None = None,
    ) -> Any:
        """The payload inside a sealed frame; raises :class:`PeerError` with
        ``WEBRTC_SIGNAL_UNAUTHENTICATED``, ``WEBRTC_SIGNAL_STALE`` or
        ``WEBRTC_SIGNAL_REPLAYED`` (the frame must then be dropped)."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if not (
            isinstance(data, dict)
            and data.get("type") == SEALED_TYPE
            and isinstance(data.get("ts"), int)
            and isinstance(data.get("nonce"), str)
            and isinstance(data.get("box"), str)
            and (connection_id is None or isinstance(connection_id, str))
        ):
            raise _rejected("WEBRTC_SIGNAL_UNAUTHENTICATED", "not a sealed signal", sender)
        ts: int = data["ts"]
        now_ms = int((time.time() if now is None else now) * 1000)
        if abs(now_ms - ts) > self.window * 1000 or ts <= self._floor:
            raise _rejected("WEBRTC_SIGNAL_STALE", "timestamp outside the window", sender)
        try:
            nonce, box = _unb64(data["nonce"]), _unb64(data["box"])
            aad = self._aad(sender, receiver, connection_id, ts)
            plain = AESGCM(self.keys.signal_key).decrypt(nonce, box, aad)
            payload = orjson.loads(plain)
        except (ValueError, InvalidTag, orjson.JSONDecodeError):
            raise _rejected(
                "WEBRTC_SIGNAL_UNAUTHENTICATED", "wrong secret, room, peer or tampered", sender
            ) from None
        if nonce in self._seen:
            raise _rejected("WEBRTC_SIGNAL_REPLAYED", "a frame seen before", sender)
        self._remember(nonce, ts, now_ms)
        return payload

    def _remember(self, nonce: bytes, ts: int, now_ms: int) -> None:
        seen = self._seen
        seen[nonce] = ts
        expired = now_ms - int(self.window * 1000)
        while seen:
            oldest, oldest_ts = next(iter(seen.items()))
            if len(seen) <= self.max_remembered and oldest_ts >= expired:
                break
            del seen[oldest]
            if oldest_ts >= expired:  # forgotten before its time: refuse its era from now on
                self._floor = max(self._floor, oldest_ts)

    def _aad(self, sender: str, receiver: str, connection_id: str | None, ts: int) -> bytes:
        return orjson.dumps([_VERSION, self.keys.room, sender, receiver, connection_id, ts])


class DropLog:
    """Counts dropped signals per code and logs a warning per code at most every
    ``interval`` seconds (a flood of bad frames cannot flood the log)."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.counts: dict[str, int] = {}
        """Signals dropped so far, per error code."""
        self._logger = logger
        self._interval = interval
        self._last: dict[str, tuple[float, int]] = {}  # code -> (time logged, count then)

    def report(self, error: PeerError) -> None:
        """Count ``error`` and log it unless its code was logged within ``interval``."""
        code = error.code
        count = self.counts[code] = self.counts.get(code, 0) + 1
        now = time.monotonic()
        last_time, last_count = self._last.get(code, (-self._interval, 0))
        if now - last_time < self._interval:
            return
        suppressed = count - last_count - 1
        self._last[code] = (now, count)
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        self._logger.warning("%s%s", error, more)


def _rejected(code: str, why: str, sender: str) -> PeerError:
    return PeerError(f"signal from {sender} dropped: {why}", code=code, peer_id=sender)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as error:
        raise ValueError(str(error)) from None
