"""Who may replicate with a pool, and what each peer may read and write.

:class:`Admission` holds a pool's rule over verified public keys (``trusted_peers``,
``require_authenticated``, revoked keys); it changes at runtime (``pool.trust``,
``pool.revoke``). :func:`peer_master` builds the master side that serves one peer, with the
``can_read`` / ``can_write`` hooks of the options bound to that peer;
:func:`fork_pull_modifier` and :func:`fork_push_modifier` hold what this side pulls from
and pushes to a peer (its elected master) to the same ``can_write`` and ``can_read`` rules,
since in a topic the roles fall by election.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from reactivex import Observable

from p2pdb.errors import P2PDBError, PeerError, ReplicationError
from p2pdb.identity import key_fingerprint, parse_public_key
from p2pdb.replication import collection_handler
from p2pdb.replication.access import DocumentAccess, Modifier, apply_modifier, resolve
from p2pdb.replication.options import ReplicationOptionsChanges
from p2pdb.replication.protocol import ChangesBatch, Resync, to_wire
from p2pdb.replication.rpc import RpcChannel
from p2pdb.replication.wire import RemoteMaster

from .options import WebRTCReplicationOptions
from .peer import Peer

if TYPE_CHECKING:
    from p2pdb.collection import Collection
    from p2pdb.replication.master import CollectionHandler

__all__ = [
    "Admission",
    "fork_options",
    "fork_pull_modifier",
    "fork_push_modifier",
    "peer_master",
    "remote_master",
]


class Admission:
    """A pool's admission rule over the peers' verified public keys.

    ``trusted`` (``None``: any key) and ``revoked`` are sets of raw 32-byte keys;
    ``require_authenticated`` refuses peers that did not prove a key (RxDB peers); it is
    implied by a ``trusted`` set."""

    def __init__(self, options: WebRTCReplicationOptions) -> None:
        trusted = options.trusted_peers
        self.trusted: set[bytes] | None = (
            None if trusted is None else {parse_public_key(k) for k in trusted}
        )
        self.revoked: set[bytes] = set()
        self.require_authenticated = options.require_authenticated

    @property
    def requires_key(self) -> bool:
        """Whether a peer must prove a key to be admitted."""
        return self.require_authenticated or self.trusted is not None

    def trust(self, keys: Iterable[str | bytes] | None) -> None:
        """Replace the trusted keys (``None``: any key, as far as this rule goes)."""
        self.trusted = None if keys is None else {parse_public_key(k) for k in keys}

    def revoke(self, key: str | bytes) -> bytes:
        """Refuse ``key`` from now on (also removed from the trusted keys); returns it raw."""
        raw = parse_public_key(key)
        self.revoked.add(raw)
        if self.trusted is not None:
            self.trusted.discard(raw)
        return raw

    def admits(self, key: bytes | None) -> bool:
        """Whether a peer that proved ``key`` (``None``: proved none) is admitted."""
        if key is None:
            return not self.requires_key
        return key not in self.revoked and (self.trusted is None or key in self.trusted)

    def check(self, peer: Peer) -> None:
        """Raise ``WEBRTC_PEER_UNTRUSTED`` unless ``peer`` is admitted."""
        if self.admits(peer.public_key):
            return
        key = peer.public_key
        if key is None:
            why = (
                "did not authenticate (an RxDB peer, or p2pdb with authenticate=False), and "
                "this pool requires authenticated peers (trusted_peers / require_authenticated)"
            )
        elif key in self.revoked:
            why = f"proved key {key_fingerprint(key)}, which was revoked"
        else:
            why = f"proved key {key_fingerprint(key)}, which is not among the trusted peers"
        raise PeerError(
            f"Peer {peer.peer_id} {why}; disconnected.",
            code="WEBRTC_PEER_UNTRUSTED",
            peer_id=peer.peer_id,
            fingerprint=None if key is None else key_fingerprint(key),
        )


def peer_master(
    collection: Collection, origin: str, options: WebRTCReplicationOptions, peer: Peer
) -> CollectionHandler:
    """The master side serving ``peer``: ``collection_handler`` with the options'
    ``can_read(peer, document)`` / ``can_write(peer, assumed, new)`` bound to ``peer``."""
    read = None if options.can_read is None else functools.partial(options.can_read, peer)
    write = None if options.can_write is None else functools.partial(options.can_write, peer)
    access = DocumentAccess(
        can_read=read,
        can_write=write,
        selector=options.selector,
        outgoing=options.push_modifier,
        incoming=options.pull_modifier,
    )
    # the origin names this peer's database alone (its token, and its key when proved)
    handler = collection_handler(collection, origin=origin, access=access, origin_is_remote=True)
    if peer.public_key is not None:  # a p2pdb peer that proved its key: causal vectors travel
        # and, when both offered it, the revs-diff extension (p2pdb.replication.revs)
        return handler.with_causal_order(revs=peer.revs)
    return handler


def remote_master(
    channel: RpcChannel,
    stream: Observable[ChangesBatch | Resync],
    options: WebRTCReplicationOptions,
    peer: Peer,
) -> RemoteMaster:
    """The fork's handler of ``peer``, its elected master: with causal vectors
    (``p2pdb.replication.causal_order``) when it proved a p2pdb key, and the revs-diff
    extension when both hellos offered it; plain for RxDB peers."""
    causal = peer.public_key is not None
    return RemoteMaster(channel, stream, options.limits, causal=causal, revs=causal and peer.revs)


def fork_pull_modifier(
    collection: Collection,
    options: WebRTCReplicationOptions,
    peer: Peer,
    report: Callable[[P2PDBError], None],
) -> Modifier | None:
    """The fork's ``pull_modifier`` for ``peer``: the options' own, then ``can_write(peer,
    stored, new)``; a state the rule refuses is not stored (reported as
    ``REPLICATION_WRITE_REFUSED``), so a peer elected master writes no more than it could
    push."""
    can_write = options.can_write
    if can_write is None:
        return options.pull_modifier
    primary_key = collection.schema.primary_key

    async def guarded(doc: dict[str, Any]) -> dict[str, Any] | None:
        new = await apply_modifier(options.pull_modifier, doc)
        if new is None:
            return None
        stored = collection.stored_state(str(new[primary_key]))
        current = None if stored is None else to_wire(stored)
        if await resolve(can_write(peer, current, new)):
            return new
        report(
            ReplicationError(
                f"Peer {peer.peer_id} sent {new[primary_key]!r}, which can_write refuses; "
                "it was not stored.",
                code="REPLICATION_WRITE_REFUSED",
                ids=[new[primary_key]],
                peer_id=peer.peer_id,
            )
        )
        return None

    return guarded


def fork_push_modifier(options: WebRTCReplicationOptions, peer: Peer) -> Modifier | None:
    """The fork's ``push_modifier`` for ``peer``: documents ``can_read(peer, doc)`` refuses
    are never pushed to it (their rows stay unsent), then the options' own modifier."""
    can_read = options.can_read
    if can_read is None:
        return options.push_modifier

    async def guarded(doc: dict[str, Any]) -> dict[str, Any] | None:
        if not await resolve(can_read(peer, doc)):
            return None
        return await apply_modifier(options.push_modifier, doc)

    return guarded


def fork_options(
    collection: Collection,
    options: WebRTCReplicationOptions,
    peer: Peer,
    report: Callable[[P2PDBError], None],
) -> ReplicationOptionsChanges:
    """The ``replicate()`` options of this side as the fork of ``peer``: the pool's batch
    size and selector, and the modifiers holding ``peer`` to ``can_read``/``can_write``."""
    return {
        "batch_size": options.batch_size,
        "selector": options.selector,
        "pull_modifier": fork_pull_modifier(collection, options, peer, report),
        "push_modifier": fork_push_modifier(options, peer),
    }
