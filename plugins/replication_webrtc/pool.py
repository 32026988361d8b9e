"""``replicate_webrtc``: keep a collection in sync with every peer of a topic."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Unpack

from reactivex import Observable
from reactivex.abc import DisposableBase
from reactivex.subject import BehaviorSubject

from p2pdb.backoff import Backoff
from p2pdb.errors import PeerError, ReplicationError, ValidationError
from p2pdb.identity import key_fingerprint
from p2pdb.replication import ReplicationState
from p2pdb.streams import EventStream, HeldEventStream

from .admission import Admission
from .connection import ConnectionHandler
from .handler_factory import ConnectionHandlerFactory
from .handshake import TrustContext
from .options import WebRTCOptionKeywords, WebRTCReplicationOptions
from .peer import Peer, PeerMessage
from .ports import CollectionPort, shared_handler
from .rpc import PeerSink
from .session import PeerSession, SessionCallbacks, SessionSettings

if TYPE_CHECKING:
    from p2pdb.collection import Collection

__all__ = ["ReplicationPool", "replicate_webrtc"]

log = logging.getLogger("p2pdb.webrtc.pool")

RESYNC_RETRY = 1.0
"""Seconds ``wait_for_in_sync`` waits for a fork's answer to its ``RESYNC`` before it asks
again (doubling, with jitter, up to :data:`RESYNC_RETRY_MAX`)."""
RESYNC_RETRY_MAX = 8.0


class ReplicationPool:
    """The replications of one collection with the peers of one topic.

    ``peers`` emits the set of connected peers; ``peer_states`` maps each peer for which we
    are the fork to its :class:`~p2pdb.replication.ReplicationState`; ``errors`` emits every
    error (transport, protocol, replication). :func:`replicate_webrtc` makes and starts one;
    use ``async with`` or :meth:`cancel` (which detaches from the connection handler, and
    closes it when no other collection of the database replicates through it).
    """

    def __init__(
        self,
        collection: Collection,
        topic: str,
        connection: ConnectionHandler | CollectionPort,
        options: WebRTCReplicationOptions | None = None,
    ) -> None:
        self.collection = collection
        self.topic = topic
        if not isinstance(connection, CollectionPort):
            connection = CollectionPort(connection, collection.name)
        #: This collection's port on the connection handler (shared with the database's
        #: other collections in the topic: ports.py); ``connection.handler`` is the handler.
        self.connection = connection
        self.options = options or WebRTCReplicationOptions()
        self.token = collection.database.token
        self.sessions: dict[Peer, PeerSession] = {}
        self.session_settings = SessionSettings(collection, topic, self.token, self.options)
        self._callbacks = SessionCallbacks(
            report=self._report,
            replication_error=self._on_replication_error,
            changed=self._changed,
            adopt=self._adopt,
            disconnect=self.connection.disconnect,
        )
        self._peers: BehaviorSubject[frozenset[Peer]] = BehaviorSubject(frozenset())
        self._errors: EventStream[Exception] = HeldEventStream()  # (reported while joining)
        self._state_changed = asyncio.Event()
        self._subscriptions: list[DisposableBase] = []
        self._tasks: set[asyncio.Task[None]] = set()  # session starts and closes
        self._started = False
        self._canceled = False
        # token (+ proved key) -> the collection's sequence number when that peer left in
        # sync with us
        self._departed: dict[str, int] = {}
        self._unregister: Callable[[], None] = lambda: None
        #: Who is admitted (trusted and revoked keys); change it with :meth:`trust` and
        #: :meth:`revoke`.
        self.admission = Admission(self.options)
        self._trust: TrustContext | None = None  # made by start() (loads our identity)

    async def start(self) -> None:
        """Listen to the connection handler (:func:`replicate_webrtc` calls it)."""
        if self._started:
            return
        self.collection.database.check_open()
        self._started = True
        identity = self.collection.database.identity if self.options.authenticate else None
        self._trust = TrustContext(
            self.topic, self.token, identity, self.admission, self.options.request_timeout
        )
        # closing the database cancels the pool first
        self._unregister = self.collection.database.close_with_collection(
            self.collection.name, self.cancel
        )
        c = self.connection
        if self.options.max_links is not None:
            c.set_max_links(self.options.max_links)  # the partial mesh's size (mesh.py)
        self._subscriptions = [
            c.connects.subscribe(on_next=self._on_connect),
            c.errors.subscribe(on_next=self._report),
            self.collection.batches.subscribe(on_next=lambda _events: self._changed()),
            # the last two: cancel() keeps them until the sessions drained
            c.disconnects.subscribe(on_next=self._on_disconnect),
            c.messages.subscribe(on_next=self._on_message),
        ]
        try:  # attached once listening: a channel routed to us at once is not missed
            c.attach()  # WEBRTC_SETTING_INVALID: this collection is there already
        except BaseException:
            for subscription in self._subscriptions:
                subscription.dispose()
            self._unregister()
            raise

    # -- public API ------------------------------------------------------------------------

    @property
    def peers(self) -> Observable[frozenset[Peer]]:
        """The connected peers, now and on every change."""
        return self._peers

    @property
    def peer_states(self) -> dict[Peer, ReplicationState]:
        """The replication state per peer for which this side is the fork."""
        return {p: s.state for p, s in self.sessions.items() if s.state is not None}

    @property
    def errors(self) -> Observable[Exception]:
        """Every error of the pool, its connections and its replications."""
        return self._errors

    async def trust(self, public_keys: Iterable[str | bytes] | None) -> None:
        """Admit only peers proving one of ``public_keys`` from now on (``None``: any key);
        connected peers no longer admitted are disconnected (``WEBRTC_PEER_UNTRUSTED``)."""
        self.admission.trust(public_keys)
        await self._drop_unadmitted()

    async def revoke(self, public_key: str | bytes) -> None:
        """Refuse ``public_key`` from now on and end every connection of the peer that
        proved it (``WEBRTC_PEER_UNTRUSTED`` on ``errors``)."""
        self.admission.revoke(public_key)
        await self._drop_unadmitted()

    async def _drop_unadmitted(self) -> None:
        for peer, session in list(self.sessions.items()):
            if session.valid is not None and not self.admission.admits(session.peer.public_key):
                try:
                    self.admission.check(session.peer)
                except PeerError as exc:
                    self._report(exc)
                await self.connection.disconnect(peer)

    async def wait_for_first_peer(self) -> Peer:
        """Wait until a peer is connected, tokens exchanged and roles set; return it."""
        while True:
            for peer, session in self.sessions.items():
                if session.is_master is not None:
                    return peer
            await self.wait_for_change()

    async def wait_for_in_sync(
        self,
        peers: int = 0,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (a script's one-line bound)
    ) -> None:
        """Wait until this side is in sync with every connected peer, and with ``peers``
        of them at least.

        With a peer for which we are the **fork**: our replication is in sync (everything
        the master streamed is stored, every local write was pushed and acknowledged).
        With a peer for which we are the **master**: that fork has pulled and stored
        everything this collection held when the call began, and pushed what it held
        (we send it a ``RESYNC``; its next ``masterChangesSince`` carries the checkpoint
        it stored, and a p2pdb fork sends it only after its pending pushes).

        A peer still in its handshake is waited for. A peer that left while in sync still
        counts if nothing was written to the collection since. With no peer connected and
        ``peers=0`` (the default) it returns at once. ``timeout`` (seconds) raises
        ``WEBRTC_SYNC_TIMEOUT``; a :meth:`cancel` meanwhile raises ``REPLICATION_CANCELED``.
        """
        if type(peers) is not int or peers < 0:
            raise ValidationError(
                f"peers must be a non-negative integer, got {peers!r}.",
                code="WEBRTC_SETTING_INVALID",
                setting="peers",
            )
        rounds: dict[PeerSession, int] = {}  # the ack round asked of each fork
        target = self._last_seq()
        silence = Backoff(RESYNC_RETRY, RESYNC_RETRY_MAX)
        try:
            async with asyncio.timeout(timeout):
                while not self._in_sync_with(peers, target, rounds):
                    try:
                        async with asyncio.timeout(silence.next_delay()):
                            await self.wait_for_change()
                    except TimeoutError:
                        self._ask_silent_forks(rounds)
        except TimeoutError:
            raise ReplicationError(
                f"Not in sync with {max(peers, 1)} peer(s) of topic {self.topic!r} "
                f"within {timeout} s ({len(self.sessions)} connected).",
                code="WEBRTC_SYNC_TIMEOUT",
                topic=self.topic,
                peers=peers,
            ) from None

    def _in_sync_with(self, peers: int, target: int, rounds: dict[PeerSession, int]) -> bool:
        count = 0
        for session in self.sessions.values():
            if session.valid is False:
                continue  # an invalid peer gets nothing and counts for nothing
            if session.is_master is None:
                return False  # handshake in progress
            if session.is_master:
                acks = session.acks
                if session not in rounds:
                    rounds[session] = acks.ask()
                if not session.acked_since(rounds[session], target):
                    if acks.acked_round >= rounds[session] and acks.acked_seq < target:
                        # it answered from behind (that pull brought it our documents):
                        # ask again, its next request shows where it is now
                        rounds[session] = acks.ask()
                    return False
            elif not session.in_sync():
                return False
            count += 1
        if count >= peers:
            return True
        connected = {f"{s.handshake.key_prefix}{s.token}" for s in self.sessions.values()}
        now = self._last_seq()
        count += sum(1 for t, seq in self._departed.items() if t not in connected and seq >= now)
        return count >= peers

    def _ask_silent_forks(self, rounds: dict[PeerSession, int]) -> None:
        """Post the ``RESYNC`` again to each fork that has not answered its round: RxDB
        17.6 drops a ``RESYNC`` queued right behind stream events (its downstream drains
        its tasks in one go and breaks off at a ``RESYNC`` that is not first, having taken
        it out of the queue), which it delays while its own push runs. Harmless to a p2pdb
        fork (it holds one ``RESYNC`` until its pushes went out, however many came)."""
        for session, round_number in rounds.items():
            if session.acks.acked_round < round_number:
                rounds[session] = session.acks.ask()

    def _last_seq(self) -> int:
        return self.collection.database.storage.last_seq(self.collection.name)

    async def cancel(self) -> None:
        """Stop replicating with everyone and leave the topic."""
        if self._canceled:
            return
        self._canceled = True
        self._unregister()
        # no new peers; while the sessions drain, the peers' messages still reach them (the
        # answers to the drain's own requests come that way) and a peer that leaves ends its
        # session (its pending requests fail at once instead of waiting for close_timeout)
        *others, disconnects, messages = self._subscriptions
        for subscription in others:
            subscription.dispose()
        # let every peer receive what we queued for it (our last answers) before leaving
        within = self.options.close_timeout
        await asyncio.gather(*(s.drain(within) for s in list(self.sessions.values())))
        disconnects.dispose()
        messages.dispose()
        for session in list(self.sessions.values()):
            await session.close()
        self.sessions.clear()
        # session starts and closes are short: let them finish (a half-closed session
        # would leave its replication running)
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.connection.close()
        self._peers.on_next(frozenset())
        self._peers.on_completed()
        self._errors.on_completed()
        self._changed()

    async def __aenter__(self) -> ReplicationPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()

    async def wait_for_change(self) -> None:
        """Wait for the next change of what the pool reports: peers, roles, sync state
        (raises ``REPLICATION_CANCELED`` once the pool is canceled)."""
        if self._canceled:
            raise ReplicationError("The pool was canceled.", code="REPLICATION_CANCELED")
        self._state_changed.clear()
        await self._state_changed.wait()

    # -- internals -------------------------------------------------------------------------

    def _changed(self) -> None:
        self._state_changed.set()

    def _report(self, error: Exception) -> None:
        log.warning("webrtc %s/%s: %s", self.collection.name, self.topic, error)
        self._errors.on_next(error)

    def _on_replication_error(self, error: Exception) -> None:
        if isinstance(error, PeerError) and error.code == "WEBRTC_PEER_GONE":
            # the peer left (told as a departure, not an error): on the native engine a send
            # on a channel closed in its threads ends the link at once, but the request that
            # failed can reach the replication before its session stops it (docs/webrtc.md)
            return
        self._errors.on_next(error)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _t: self._changed())

    def _on_connect(self, peer: Peer) -> None:
        sink = PeerSink(self.connection, peer)
        assert self._trust is not None  # start() made it before subscribing
        handshake = self._trust.for_peer(peer, self.connection.dtls_fingerprints(peer))
        session = PeerSession(self.session_settings, self._callbacks, peer, sink, handshake)
        # registered at once, so the peer's first messages find it; they wait in its queue
        self.sessions[peer] = session
        self._peers.on_next(frozenset(s.peer for s in self.sessions.values()))
        self._spawn(session.start())

    def _on_disconnect(self, peer: Peer) -> None:
        session = self.sessions.pop(peer, None)
        if session is None:
            return
        self._peers.on_next(frozenset(s.peer for s in self.sessions.values()))
        self._spawn(self._close_departed(session))

    async def _close_departed(self, session: PeerSession) -> None:
        await session.close()
        if session.token is not None and session.synced_seq >= 0:
            self._departed[session.handshake.key_prefix + session.token] = session.synced_seq

    def _on_message(self, message: PeerMessage) -> None:
        session = self.sessions.get(message.peer)
        if session is not None:
            session.on_message(message.data)

    async def _adopt(self, session: PeerSession) -> None:
        """A second link to a database we already replicate with (after a signaling
        reconnect): keep the newest, drop the older one, but only if the newest proved
        the same key (or the older one proved none): a peer claiming another's token
        cannot knock that peer's link down (``WEBRTC_TOKEN_CONFLICT``)."""
        key = session.peer.public_key
        for peer, other in list(self.sessions.items()):
            if other is session or other.token != session.token:
                continue
            other_key = other.peer.public_key
            if other_key is not None and other_key != key:
                raise PeerError(
                    f"Peer {session.peer.peer_id} claims the database token of a connected "
                    f"peer that proved key {key_fingerprint(other_key)}, "
                    + ("without proving one" if key is None else "with another key")
                    + "; refused.",
                    code="WEBRTC_TOKEN_CONFLICT",
                    peer_id=session.peer.peer_id,
                )
            log.info("dropping an older link to token %s", session.token)
            await self.connection.disconnect(peer)
        self._peers.on_next(frozenset(s.peer for s in self.sessions.values()))


async def replicate_webrtc(
    collection: Collection,
    topic: str,
    handler: ConnectionHandlerFactory,
    *,
    options: WebRTCReplicationOptions | None = None,
    **shortcuts: Unpack[WebRTCOptionKeywords],
) -> ReplicationPool:
    """Join ``topic`` and replicate ``collection`` with every peer that joins it.

    ``handler`` makes the connections: ``aiortc_connection_handler(signaling_url, ...)``.
    ``options`` (:class:`WebRTCReplicationOptions`): ``is_peer_valid``, ``batch_size``,
    ``hash_function``, ``request_timeout``, ``heartbeat_interval``, ``heartbeat_timeout``,
    ``close_timeout``, ``authenticate``, ``trusted_peers``, ``require_authenticated``,
    ``can_read``, ``can_write``; each may also be given as a keyword
    (``trusted_peers=[...]``), which overrides ``options``.
    """
    settings = dataclasses.replace(options or WebRTCReplicationOptions(), **shortcuts)
    collection.database.check_open()  # before joining the topic
    # the database's pools in this topic through this factory share one handler (ports.py)
    connection = await shared_handler(collection.database, collection.name, topic, handler)
    pool = ReplicationPool(collection, topic, connection, settings)
    try:
        await pool.start()
    except BaseException:  # e.g. IDENTITY_LOCKED: leave the topic again
        await connection.close()
        raise
    return pool
