"""The options of :func:`~p2pdb.plugins.replication_webrtc.replicate_webrtc`, as one object.

``replicate_webrtc(..., options=WebRTCReplicationOptions(request_timeout=5))`` and the
keyword shortcuts ``replicate_webrtc(..., request_timeout=5)`` are the same thing:
:class:`WebRTCOptionKeywords` mirrors the dataclass fields (a test keeps them equal).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import TypedDict

from p2pdb.errors import ValidationError
from p2pdb.replication.limits import PeerLimits

from .election import HashFunction, sha256_hex
from .peer import Peer

__all__ = ["PeerValidator", "WebRTCOptionKeywords", "WebRTCReplicationOptions"]

#: ``is_peer_valid(peer)``, sync or async.
PeerValidator = Callable[[Peer], bool | Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class WebRTCReplicationOptions:
    """How a pool replicates with the peers of its topic.

    - ``is_peer_valid(peer)`` (sync or async): False means that peer gets no data and its
      requests get no answers at all.
    - ``batch_size``: documents per pull and per push when this side is the fork.
    - ``hash_function``: the master election hash; must match the other peers' (RxDB's
      default is SHA-256 hex, :func:`sha256_hex`).
    - ``request_timeout``: seconds to wait for any answer from a peer.
    - ``heartbeat_interval``, ``heartbeat_timeout``: a peer silent for
      ``heartbeat_interval`` is asked for its token; no answer within
      ``heartbeat_timeout`` drops it.
    - ``close_timeout``: seconds ``cancel()`` waits for each peer to receive what was
      queued for it (a fork's last answer) before leaving.
    - ``limits``: what each peer may make this process spend (requests in flight, bytes
      queued for it, the shared memory budget, nesting depth, checkpoint size, error
      rate); a peer over them is slowed, then dropped with ``WEBRTC_PEER_OVER_LIMIT``.
    """

    is_peer_valid: PeerValidator | None = None
    batch_size: int = 100
    hash_function: HashFunction = sha256_hex
    request_timeout: float = 20.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 4.0
    close_timeout: float = 2.0
    limits: PeerLimits = PeerLimits()

    def __post_init__(self) -> None:
        if not isinstance(self.limits, PeerLimits):
            raise ValidationError(
                f"limits must be a PeerLimits, got {self.limits!r}.",
                code="WEBRTC_SETTING_INVALID",
                setting="limits",
            )
        if type(self.batch_size) is not int or self.batch_size < 1:
            raise ValidationError(
                f"batch_size must be a positive integer, got {self.batch_size!r}.",
                code="WEBRTC_SETTING_INVALID",
                setting="batch_size",
            )
        for name in (
            "request_timeout",
            "heartbeat_interval",
            "heartbeat_timeout",
            "close_timeout",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ValidationError(
                    f"{name} must be a positive number of seconds, got {value!r}.",
                    code="WEBRTC_SETTING_INVALID",
                    setting=name,
                )


class WebRTCOptionKeywords(TypedDict, total=False):
    """The fields of :class:`WebRTCReplicationOptions` as keyword arguments."""

    is_peer_valid: PeerValidator | None
    batch_size: int
    hash_function: HashFunction
    request_timeout: float
    heartbeat_interval: float
    heartbeat_timeout: float
    close_timeout: float
    limits: PeerLimits


def option_names() -> frozenset[str]:
    """The field names of :class:`WebRTCReplicationOptions` (for the mirror test)."""
    return frozenset(f.name for f in fields(WebRTCReplicationOptions))
