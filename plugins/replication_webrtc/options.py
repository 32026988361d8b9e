"""The options of :func:`~p2pdb.plugins.replication_webrtc.replicate_webrtc`, as one object.

``replicate_webrtc(..., options=WebRTCReplicationOptions(request_timeout=5))`` and the
keyword shortcuts ``replicate_webrtc(..., request_timeout=5)`` are the same thing:
:class:`WebRTCOptionKeywords` mirrors the dataclass fields (a test keeps them equal).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypedDict

from p2pdb.errors import ValidationError
from p2pdb.identity import parse_public_key
from p2pdb.replication.access import Modifier
from p2pdb.replication.limits import PeerLimits

from .election import HashFunction, sha256_hex
from .mesh import check_max_links
from .peer import Peer

__all__ = [
    "PeerReadCheck",
    "PeerValidator",
    "PeerWriteCheck",
    "WebRTCOptionKeywords",
    "WebRTCReplicationOptions",
]

#: ``is_peer_valid(peer)``, sync or async.
PeerValidator = Callable[[Peer], bool | Awaitable[bool]]
#: ``can_read(peer, document)``, sync or async: may ``peer`` receive ``document``?
PeerReadCheck = Callable[[Peer, Mapping[str, Any]], bool | Awaitable[bool]]
#: ``can_write(peer, assumed, new)``, sync or async: may ``peer`` write ``new`` over the
#: state it assumed (``None``: a new document)?
PeerWriteCheck = Callable[
    [Peer, Mapping[str, Any] | None, Mapping[str, Any]], bool | Awaitable[bool]
]


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
    - ``authenticate``: prove this database's identity (``db.identity``) to p2pdb
      peers with the handshake bound to each connection, and check theirs (default).
    - ``trusted_peers``: the public keys (raw, base64 or hex) of the only peers admitted;
      implies ``require_authenticated``. ``None``: any key.
    - ``require_authenticated``: refuse peers that prove no key (RxDB peers, p2pdb peers
      with ``authenticate=False``) with ``WEBRTC_PEER_UNTRUSTED``.
    - ``can_read(peer, document)``, ``can_write(peer, assumed, new)`` (sync or async):
      what the master side serves to and accepts from each peer.
    - ``selector``, ``pull_modifier``, ``push_modifier``: partial replication (see
      ``docs/replication.md``), in both roles: as the fork they act as in ``replicate()``;
      as the master, only documents matching ``selector`` are served (and accepted),
      ``push_modifier`` shapes what is served and ``pull_modifier`` what peers push.
    - ``limits``: what each peer may make this process spend (requests in flight, bytes
      queued for it, the shared memory budget, nesting depth, checkpoint size, error
      rate); a peer over them is slowed, then dropped with ``WEBRTC_PEER_OVER_LIMIT``.
    - ``max_links``: links per peer beyond which the topic keeps a partial mesh (see
      ``mesh.py``); ``None`` keeps the connection handler's (8 unless it was given another).
    """

    is_peer_valid: PeerValidator | None = None
    batch_size: int = 100
    hash_function: HashFunction = sha256_hex
    request_timeout: float = 20.0
    heartbeat_interval: float = 1.0
    heartbeat_timeout: float = 4.0
    close_timeout: float = 2.0
    authenticate: bool = True
    trusted_peers: Collection[str | bytes] | None = None
    require_authenticated: bool = False
    can_read: PeerReadCheck | None = None
    can_write: PeerWriteCheck | None = None
    selector: Mapping[str, Any] | None = None
    pull_modifier: Modifier | None = None
    push_modifier: Modifier | None = None
    limits: PeerLimits = PeerLimits()
    max_links: int | None = None

    def __post_init__(self) -> None:
        self._check_trust()
        if self.max_links is not None:
            check_max_links(self.max_links)
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

    def _check_trust(self) -> None:
        if self.trusted_peers is not None:
            if isinstance(self.trusted_peers, str | bytes):
                raise ValidationError(
                    "trusted_peers must be a list of public keys, not one string.",
                    code="WEBRTC_SETTING_INVALID",
                    setting="trusted_peers",
                )
            for key in self.trusted_peers:
                parse_public_key(key)  # IDENTITY_KEY_INVALID
        wants_keys = self.trusted_peers is not None or self.require_authenticated
        if wants_keys and not self.authenticate:
            raise ValidationError(
                "trusted_peers / require_authenticated need authenticate=True.",
                code="WEBRTC_SETTING_INVALID",
                setting="authenticate",
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
    authenticate: bool
    trusted_peers: Collection[str | bytes] | None
    require_authenticated: bool
    can_read: PeerReadCheck | None
    can_write: PeerWriteCheck | None
    selector: Mapping[str, Any] | None
    pull_modifier: Modifier | None
    push_modifier: Modifier | None
    limits: PeerLimits
    max_links: int | None


def option_names() -> frozenset[str]:
    """The field names of :class:`WebRTCReplicationOptions` (for the mirror test)."""
    return frozenset(f.name for f in fields(WebRTCReplicationOptions))
