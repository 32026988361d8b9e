"""Bounds on what one peer can make this process spend: :class:`PeerLimits`.

A peer is admitted once (its transport connected it, ``is_peer_valid`` said yes) and may
still be hostile or broken. These limits keep it from taking the process down:

- **requests in flight**: at most ``max_requests_in_flight`` of a peer's requests are
  served at once; later ones wait (the peer is slowed), and a peer with more than
  ``max_queued_requests`` waiting is dropped; ``masterWrite`` requests are counted apart,
  against ``max_queued_writes`` and ``max_queued_bytes`` (an RxDB fork sends all push
  batches of one local write at once: 500 for a bulk insert of 10,000 documents); at most
  ``max_bulk_writes_in_flight`` of them with more than ``SMALL_WRITE_ROWS`` rows are served
  at once, small writes going ahead of them (a live change does not wait behind a bulk);
- **outbox bytes**: while more than ``max_outbox_bytes`` of answers and events wait to be
  sent to a peer, none of its requests is started; a peer whose outbox does not drain
  within ``drain_timeout`` seconds (it does not read) is dropped;
- **one memory budget per process** (:class:`MemoryBudget`): the outboxes of all peers
  together; while it is spent, only peers with an empty outbox start requests;
- **nesting depth** of an incoming message, checked on its text before anything
  recursive touches it (``max_depth``);
- **checkpoint size** a master may send (``max_checkpoint_bytes``), checked before the
  fork stores anything;
- **error rate** (unknown methods): more than ``max_errors`` within ``error_window``
  seconds drops the peer, and only the first ``logged_errors`` of a window are reported.

A peer over a limit is dropped with the transport's ``over_limit`` code
(``WEBRTC_PEER_OVER_LIMIT``, ``WEBSOCKET_PEER_OVER_LIMIT``, ``WIRE_PEER_OVER_LIMIT``); the
error's ``limit`` parameter names the limit.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields
from itertools import accumulate
from typing import Literal

import orjson

from ..errors import ValidationError

__all__ = [
    "PROCESS_BUDGET",
    "ErrorRate",
    "MemoryBudget",
    "PeerLimits",
    "json_size",
    "text_too_deep",
    "value_too_deep",
]

MiB = 1 << 20


class MemoryBudget:
    """Bytes waiting to be sent, counted across every peer that shares this object.

    Channels :meth:`charge` what they queue and :meth:`release` it once sent; request gates
    start a request only while :meth:`has_room` (or their own outbox is empty) and
    :meth:`watch` for room to come back. Not thread-safe: one event loop uses it.
    """

    def __init__(self, total_bytes: int = 256 * MiB) -> None:
        if type(total_bytes) is not int or total_bytes <= 0:
            raise ValidationError(
                f"total_bytes must be a positive integer, got {total_bytes!r}.",
                code="WIRE_LIMIT_INVALID",
                setting="total_bytes",
            )
        self.total = total_bytes
        self.used = 0
        self._watchers: set[Callable[[], None]] = set()

    def has_room(self) -> bool:
        """True while less than ``total`` bytes are charged."""
        return self.used < self.total

    def charge(self, size: int) -> None:
        """Count ``size`` more bytes waiting."""
        self.used += size

    def release(self, size: int) -> None:
        """``size`` bytes were sent (or dropped); wake the watchers if room came back."""
        was_full = not self.has_room()
        self.used = max(0, self.used - size)
        if was_full and self.has_room():
            for watcher in list(self._watchers):
                watcher()

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the budget goes from spent to having room."""
        self._watchers.add(callback)

    def unwatch(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (a second call does nothing)."""
        self._watchers.discard(callback)


#: The budget every peer of the process shares unless its limits name another one.
PROCESS_BUDGET = MemoryBudget()


@dataclass(frozen=True, slots=True)
class PeerLimits:
    """The bounds one peer is held to (see the module docstring; defaults in
    docs/webrtc.md and docs/websocket.md). RxDB's own request patterns (a few requests in
    flight while pulling, batches of a few hundred documents, every push batch of one local
    write at once: 500 requests of ~20 KB for a bulk insert of 10,000 documents of ~1 KB)
    stay below every default."""

    #: Requests of one peer served at once; more wait (the peer is slowed).
    max_requests_in_flight: int = 8
    #: ``masterWrite`` requests of one peer with more than
    #: :data:`~p2pdb.storage.SMALL_WRITE_ROWS` rows served at once (within
    #: ``max_requests_in_flight``): they take turns on the one SQLite writer anyway, and
    #: more of them at once only queue ahead of a small (live) write served beside them.
    max_bulk_writes_in_flight: int = 1
    #: Requests of one peer (other than ``masterWrite``) waiting for a slot; one more
    #: drops the peer.
    max_queued_requests: int = 64
    #: ``masterWrite`` requests of one peer waiting for a slot; one more drops the peer.
    max_queued_writes: int = 4096
    #: Bytes (their params as JSON) of one peer's ``masterWrite`` requests waiting for a
    #: slot; one more drops the peer.
    max_queued_bytes: int = 32 * MiB
    #: Bytes (JSON) of answers and events waiting to be sent to one peer before its
    #: requests stop being started.
    max_outbox_bytes: int = 8 * MiB
    #: Seconds a peer's outbox may stay over ``max_outbox_bytes`` (or the budget spent)
    #: while its requests wait, before the peer is dropped.
    drain_timeout: float = 30.0
    #: Nesting depth of an incoming message (objects and arrays; documents are about 4
    #: levels below the message).
    max_depth: int = 100
    #: Bytes (JSON) of a checkpoint a master may send; a larger one is refused, never stored.
    max_checkpoint_bytes: int = 64 * 1024
    #: Errors (unknown methods) of one peer within ``error_window`` seconds; one more
    #: drops the peer.
    max_errors: int = 20
    error_window: float = 10.0
    #: Errors of one peer reported (and logged) per window; the rest are counted and
    #: summed up in the next report.
    logged_errors: int = 5
    #: The memory budget shared with other peers (``None``: :data:`PROCESS_BUDGET`).
    budget: MemoryBudget | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "budget":
                if value is not None and not isinstance(value, MemoryBudget):
                    raise ValidationError(
                        f"budget must be a MemoryBudget or None, got {value!r}.",
                        code="WIRE_LIMIT_INVALID",
                        setting="budget",
                    )
                continue
            wanted = float if f.name in ("drain_timeout", "error_window") else int
            ok = not isinstance(value, bool) and (
                isinstance(value, int | float) if wanted is float else type(value) is int
            )
            if not ok or value <= 0:
                raise ValidationError(
                    f"PeerLimits.{f.name} must be a positive "
                    f"{'number' if wanted is float else 'integer'}, got {value!r}.",
                    code="WIRE_LIMIT_INVALID",
                    setting=f.name,
                )

    def shared_budget(self) -> MemoryBudget:
        """The budget these limits charge (:data:`PROCESS_BUDGET` unless one was given)."""
        return self.budget if self.budget is not None else PROCESS_BUDGET


Verdict = Literal["report", "quiet", "drop"]


class ErrorRate:
    """Counts one peer's errors: which to report, and when the peer is over its limit."""

    def __init__(self, limits: PeerLimits) -> None:
        self.limits = limits
        self._times: deque[float] = deque()
        self._reported: deque[float] = deque()
        #: Errors not reported since the last report (to be summed up in the next one).
        self.suppressed = 0

    def note(self, now: float) -> Verdict:
        """One more error at loop time ``now``: ``"report"`` it, keep it ``"quiet"``
        (counted in :attr:`suppressed`), or ``"drop"`` the peer (over ``max_errors``)."""
        start = now - self.limits.error_window
        for times in (self._times, self._reported):
            while times and times[0] <= start:
                times.popleft()
        self._times.append(now)
        if len(self._times) > self.limits.max_errors:
            return "drop"
        if len(self._reported) < self.limits.logged_errors:
            self._reported.append(now)
            return "report"
        self.suppressed += 1
        return "quiet"

    def take_suppressed(self) -> int:
        """The errors not reported so far (and start counting again)."""
        count, self.suppressed = self.suppressed, 0
        return count


# -- sizes and depths of untrusted JSON ---------------------------------------------------

# Escapes go first (so no quote inside a string is escaped any more), then what is between
# quotes: linear passes whatever the input (a bounded number of them), and brackets inside
# strings nest nothing.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"\\')  # deleted by translate
_OPEN_CLOSE = bytes.maketrans(b"{}", b"[]")
_PEEL_ROUNDS = 8  # a bound: each round is a pass over the brackets
_STEP = [0] * 256
_STEP[ord("[")] = _STEP[ord("{")] = 1
_STEP[ord("]")] = _STEP[ord("}")] = -1


def text_too_deep(text: str | bytes, max_depth: int) -> bool:
    """True if JSON ``text`` nests objects and arrays deeper than ``max_depth``.

    Works on the text, without parsing or recursion, so it is safe on hostile input: a
    few passes in C, and a count in Python over the brackets of a message nested more than
    :data:`_PEEL_ROUNDS` deep. A batch of 100 documents of 1 KB: ~0.1 ms, about half of
    parsing it (a pass over the whole text, then over its ~4 KB skeleton)."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    # the skeleton: brackets, quotes and backslashes only (a 110 KB batch of documents:
    # ~4 KB); a bracket is outside every string if an even number of quotes precede it
    skeleton = data.translate(None, _NOT_STRUCTURE)
    if skeleton.count(b"[") + skeleton.count(b"{") <= max_depth:
        return False  # not enough brackets to be that deep, even in strings
    if b"\\" in skeleton:
        skeleton = _ESCAPE.sub(b"", data).translate(None, _NOT_STRUCTURE)
    # two adjacent quotes (an empty string, or the end and start of two strings) change no
    # bracket's side: dropping them leaves the few quotes of strings holding brackets
    brackets = skeleton.replace(b'""', b"")
    if b'"' in brackets:
        brackets = b"".join(brackets.split(b'"')[::2])
    # a shallow message (most): peel the innermost pairs, a level a round (a balanced
    # sequence of depth d is empty after d rounds); else the running count says
    level = brackets.translate(_OPEN_CLOSE)
    for _ in range(min(max_depth, _PEEL_ROUNDS)):
        level = level.replace(b"[]", b"")
        if not level:
            return False
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > max_depth


def value_too_deep(value: object, max_depth: int) -> bool:
    """True if a parsed JSON ``value`` nests deeper than ``max_depth`` (no recursion)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: object = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)  # type: ignore[attr-defined]
    return False


def json_size(value: object) -> int:
    """Bytes of ``value`` as compact JSON (an estimate for what orjson cannot write)."""
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:
        try:  # lone surrogates (from JavaScript peers), written as escapes
            return len(json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=str))
        except (TypeError, ValueError, RecursionError):
            return 0
