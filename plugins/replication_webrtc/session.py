"""One connected peer of a pool: token exchange, role election, serving and replicating.

For each pair exactly one side is the fork (RxDB's rule, over the two database tokens): the
master serves its collection and streams its changes; the fork runs ``replicate`` with a
:class:`~p2pdb.replication.wire.RemoteMaster`. Both sides answer master requests from any
valid peer (as RxDB does). The protocol is the core's (:mod:`p2pdb.replication.wire`); this
module adds the ``token`` request, the election, the validity check and the heartbeat.

Messages from the peer are untrusted (the wire checks methods and params, documents are
validated): a peer breaking the protocol is reported and disconnected, nothing stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from reactivex.abc import DisposableBase
from reactivex.subject import Subject

from p2pdb.errors import P2PDBError, PeerError
from p2pdb.replication import (
    RESYNC,
    ChangesBatch,
    ReplicationState,
    Resync,
    collection_handler,
    replicate,
)
from p2pdb.replication.gate import RequestGate, UnknownMethods
from p2pdb.replication.master import parse_checkpoint
from p2pdb.replication.revs import REVS_METHODS
from p2pdb.replication.rpc import MessageSink, Request, RpcChannel, StreamEvent
from p2pdb.replication.wire import (
    MASTER_METHODS,
    answer_request,
    parse_stream_event,
    stream_event_json,
)
from p2pdb.tasks import cancel_and_wait

from .acks import AckRounds
from .admission import fork_options, peer_master, remote_master
from .election import is_master
from .handshake import REFUSALS, PeerHandshake, let_refusal_out
from .heartbeat import keep_alive
from .options import WebRTCReplicationOptions
from .peer import Peer
from .rpc import WEBRTC_CODES, PeerSink

if TYPE_CHECKING:
    from p2pdb.collection import Collection

__all__ = ["PeerSession", "SessionCallbacks", "SessionSettings"]

log = logging.getLogger("p2pdb.webrtc.session")

# seconds a closing session lets its replication finish applying what already arrived
_SETTLE_ON_CLOSE = 1.0
# a leaving master's token round trips with no request from the fork meanwhile (drain)
_QUIET_ROUNDS = 3


@dataclass(frozen=True)
class SessionSettings:
    """What every session of a pool shares."""

    collection: Collection
    topic: str
    token: str  # our database token
    options: WebRTCReplicationOptions


@dataclass(frozen=True)
class SessionCallbacks:
    """How a :class:`PeerSession` talks to the pool that owns it (all on the event loop)."""

    report: Callable[[Exception], None]
    """An error of this session (logged and emitted by the pool)."""
    replication_error: Callable[[Exception], None]
    """An error of the fork's replication (emitted; the replication retries)."""
    changed: Callable[[], None]
    """Something ``in_sync()`` or the roles depend on changed."""
    adopt: Callable[[PeerSession], Awaitable[None]]
    """The peer's token is known: drop any older session with the same token."""
    disconnect: Callable[[Peer], Awaitable[None]]
    """Close the link to the peer (the pool then closes this session)."""


class PeerSession:
    """Everything p2pdb does with one connected peer. Use :meth:`start` and :meth:`close`."""

    def __init__(
        self,
        settings: SessionSettings,
        callbacks: SessionCallbacks,
        peer: Peer,
        sink: MessageSink,
        handshake: PeerHandshake | None = None,
    ) -> None:
        self.settings = settings
        self.handshake = handshake or PeerHandshake(None, peer, None)  # see handshake.py
        self.callbacks = callbacks
        self.peer = peer
        self.channel = RpcChannel(
            sink,
            label=f"Peer {peer.peer_id}",
            token=settings.token,
            context={"peer_id": peer.peer_id},
            codes=WEBRTC_CODES,
            request_timeout=settings.options.request_timeout,
            on_idle=self._changed,  # in_sync() depends on it: wake wait_for_in_sync()
            budget=settings.options.limits.shared_budget(),
            primary_key=settings.collection.schema.primary_key,  # live events go first
            gauge=sink if isinstance(sink, PeerSink) else None,  # they overtake aiortc's queue
        )
        # the peer's requests that cost work are served within its limits, the rest at once
        self.gate = RequestGate(
            self.channel, settings.options.limits, self._on_request, self._violation
        )
        self._unknown = UnknownMethods(
            self.channel, settings.options.limits, callbacks.report, self._violation
        )
        self._dropping = False  # reported and being disconnected: ignore the rest
        self.token: str | None = None
        self.valid: bool | None = None
        self.is_master: bool | None = None
        self.state: ReplicationState | None = None
        #: As the master: what the fork acknowledged (see acks.py).
        self.acks = AckRounds(lambda: self.channel.post_event(RESYNC))
        self._missed_stream = False  # a stream event came before our roles were settled
        #: As the fork: the highest checkpoint of a stream batch with documents.
        self.streamed_seq = 0
        #: Requests answered so far (their answers queued).
        self.requests_seen = 0
        #: The collection's sequence number when this pair was last known in sync (-1:
        #: never): a peer that left in sync still counts for ``wait_for_in_sync``.
        self.synced_seq = -1
        self._stream: Subject[ChangesBatch | Resync] = Subject()
        self._master = collection_handler(settings.collection, origin=f"webrtc:{settings.topic}")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscription: DisposableBase | None = None
        self._error_subscription: DisposableBase | None = None
        self._validity_known = asyncio.Event()
        self.closed = False

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def start(self) -> None:
        """Begin: check validity, exchange tokens, elect roles, start replicating."""
        await self.channel.start()
        await self.gate.start()
        self._spawn(self._setup())
        self._spawn(keep_alive(self.channel, self.settings.options, self._is_valid, self._silent))

    async def __aenter__(self) -> PeerSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _setup(self) -> None:
        settings = self.settings
        try:
            self.valid = await self._check_valid()
            self._validity_known.set()
            if not self.valid:
                log.info("peer %s is not valid; it gets nothing", self.peer.peer_id)
                return
            token = self.handshake.peer_token or await self.channel.request("token", [])
            if not isinstance(token, str) or not token or len(token) > 200:
                raise self.channel.error(
                    "protocol_violation", f"The peer's token is not a short string: {token!r}."
                )
            self.token = token
            # this peer's pushes get their own origin, so its echo can be left out
            self._master = peer_master(  # a verified peer's key is part of its origin
                settings.collection,
                f"webrtc:{settings.topic}:{self.handshake.key_prefix}{token}",
                settings.options,
                self.peer,
            )
            if token == settings.token:
                raise PeerError(
                    "Connected to a peer with our own database token (the same database "
                    "opened twice?); not replicating with it.",
                    code="WEBRTC_SAME_DATABASE",
                )
            await self.callbacks.adopt(self)
            self.is_master = is_master(settings.token, token, settings.options.hash_function)
            if self.is_master:
                self._serve_stream()
            else:
                self.state = replicate(
                    settings.collection,
                    remote_master(self.channel, self._stream, settings.options, self.peer),
                    f"{settings.topic}||{self.handshake.key_prefix}{token}",
                    **fork_options(
                        settings.collection, settings.options, self.peer, self.callbacks.report
                    ),
                )
                self._error_subscription = self.state.errors.subscribe(
                    self.callbacks.replication_error
                )
                self.state.active.subscribe(lambda _active: self._changed())
                if self._missed_stream:
                    self._stream.on_next(RESYNC)
            self._changed()
        except P2PDBError as exc:
            refused = exc.code in REFUSALS  # told even if the peer left meanwhile
            if self.closed or self._dropping or (self.channel.closed and not refused):
                return  # the peer went away (we are closing) or was dropped during the handshake
            self.callbacks.report(exc)
            if refused:
                await let_refusal_out(self.channel)
            await self.callbacks.disconnect(self.peer)

    async def _check_valid(self) -> bool:
        self.peer = await self.handshake.authenticate(self.channel)  # the verified key
        check = self.settings.options.is_peer_valid
        if check is None:
            return True
        verdict = check(self.peer)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)

    def _serve_stream(self) -> None:
        def forward(batch: ChangesBatch | Resync) -> None:
            self.channel.post_event(stream_event_json(batch))
            self._changed()

        # The peer's own pushes are not echoed back (RxDB echoes them; its forks and ours
        # skip the echo, but it costs a round of doubt and re-pulling on our forks).
        self._subscription = self._master.stream(skip_own=True).subscribe(on_next=forward)
        self.channel.post_event(RESYNC)

    def _is_valid(self) -> bool:
        return bool(self.valid)

    async def _silent(self) -> None:
        self.callbacks.report(
            PeerError(
                f"Peer {self.peer.peer_id} stopped answering; disconnecting.",
                code="WEBRTC_PEER_TIMEOUT",
                peer_id=self.peer.peer_id,
            )
        )
        await self.callbacks.disconnect(self.peer)

    # -- incoming --------------------------------------------------------------------------

    def on_message(self, data: object) -> None:
        """Handle one message from the peer."""
        if self._dropping:
            return  # what a dropped peer sent before it was gone costs nothing
        try:
            incoming = self.channel.receive(data)
            if isinstance(incoming, Request):
                self._admit(incoming)
            elif isinstance(incoming, StreamEvent):
                self._on_stream_event(incoming.result)
        except PeerError as exc:
            self._violation(exc)

    def _admit(self, request: Request) -> None:
        if self.valid is False:
            return  # an invalid peer gets no answers at all
        if self.valid and not self._serves(request.method):
            self._answer_at_once(request)  # cheap: not worth a slot (heartbeats never wait)
        else:
            self.gate.push(request)  # raises the over_limit PeerError when too many wait

    def _serves(self, method: str) -> bool:
        """A master method (the revs-diff ones only when agreed with this peer)."""
        return method in MASTER_METHODS or (method in REVS_METHODS and self.peer.revs)

    def _answer_at_once(self, request: Request) -> None:
        if request.method == "token":
            # ahead of the queue: a heartbeat must not wait behind a large batch
            self.channel.answer(request.id, self.settings.token, urgent=True)
        else:
            self._unknown.refuse(request)  # reported within the peer's error rate

    def _violation(self, error: PeerError) -> None:
        if self._dropping:
            return  # reported once
        self._dropping = True
        error.parameters.setdefault("peer_id", self.peer.peer_id)
        self.callbacks.report(error)
        self._spawn(self.callbacks.disconnect(self.peer))

    def _on_stream_event(self, result: object) -> None:
        if self.is_master:
            raise self.channel.error(
                "protocol_violation", "A stream event from a peer that is not our master."
            )
        if self.is_master is None:
            # roles not settled yet (a benign race): the fork starts with a full pull, and a
            # RESYNC after it shows the master what it stored (see start)
            self._missed_stream = True
            return
        item = parse_stream_event(result, WEBRTC_CODES, self.settings.options.limits)
        if isinstance(item, ChangesBatch) and item.documents:  # an empty one brings nothing
            with contextlib.suppress(P2PDBError):
                self.streamed_seq = max(self.streamed_seq, parse_checkpoint(item.checkpoint))
        self._stream.on_next(item)

    async def _on_request(self, request: Request) -> None:
        if self.handshake.handles(self.channel, request):  # before validity: handshake.py
            return
        await self._validity_known.wait()
        if not self.valid:
            return  # an invalid peer gets no answers at all
        if not self._serves(request.method):
            self._answer_at_once(request)
            return
        rounds = self.acks.arrived()  # the RESYNC rounds this request may answer
        before = self._last_seq()
        try:
            result = await answer_request(self.channel, self._master, request)
            self.requests_seen += 1
        except PeerError as exc:  # a hostile or broken peer: answered, now dropped
            self._violation(exc)
            return
        except P2PDBError as exc:  # our side failed (closed database, storage)
            self.callbacks.report(exc)
            return
        if request.method == "masterChangesSince" and self.is_master and result is not None:
            # The fork asks from the checkpoint it stored with the documents before it:
            # it holds everything up to there (its acknowledgement; the answer is queued).
            try:
                seq: int | None = parse_checkpoint(request.params[0])
            except P2PDBError:
                seq = None
            self.acks.served(rounds, seq)
            self._changed()
        elif request.method == "masterWrite" and self.is_master and isinstance(result, list):
            now = self._last_seq()  # did the rows written take every number since before?
            if 0 < len(request.params[0]) - len(result) == now - before:
                self.acks.own_push(before, now)
                self._changed()

    # -- state -----------------------------------------------------------------------------

    def in_sync(self) -> bool:
        """Our side of this pair has nothing left to do right now.

        As the fork: our replication is in sync (pulled everything streamed to us, pushed
        every local write). As the master: the peer acknowledged everything we hold (see
        :meth:`ask_ack`) and our answers went out."""
        if not self.valid:
            return self.valid is False
        if self.is_master is None or not self.channel.idle.is_set():
            return False
        if self.is_master:
            return self.acks.held() >= self._last_seq()
        return self.state is not None and self.state.is_in_sync()

    def acked_since(self, round_number: int, seq: int) -> bool:
        """As the master: the fork answered round ``round_number`` (or a later one) of
        ``acks.ask()`` with a checkpoint at or past ``seq``, and our answer went out."""
        return self.acks.since(round_number, seq) and self.channel.idle.is_set()

    def _last_seq(self) -> int:
        collection = self.settings.collection
        return collection.database.storage.last_seq(collection.name)

    def _note_sync(self, leaving: bool = False) -> None:
        """Remember how far this pair is known to be in sync (``synced_seq``)."""
        if self.closed or self.is_master is None:
            return
        if self.is_master:
            self.synced_seq = max(self.synced_seq, self.acks.acked_seq)
        elif self.in_sync() or (leaving and self._holds_all_streamed()):
            self.synced_seq = max(self.synced_seq, self._last_seq())

    def _holds_all_streamed(self) -> bool:
        """As the fork of a master that left: every local write was pushed, and what we
        stored reaches the last stream batch with documents (a master streams every write;
        a pull cut short by its leaving would have brought nothing new)."""
        state = self.state
        if state is None or not state.is_pushed():
            return False
        try:
            return parse_checkpoint(state.down_checkpoint) >= self.streamed_seq
        except P2PDBError:
            return False

    def _changed(self) -> None:
        self._note_sync()
        self.callbacks.changed()

    async def drain(self, within: float) -> None:
        """Leave gracefully (at most ``within`` seconds).

        As the master: ``token`` requests behind our last answers (the channel is
        ordered: once one is answered, the fork has everything we sent), until the fork
        stopped asking (a pull it was doing is finished: its last answer got there). As
        the fork: finish pushing, then pull twice from the stored checkpoint, which shows
        the master what we hold."""
        if not self.valid or self.closed or self.channel.closed or self.is_master is None:
            return
        with contextlib.suppress(TimeoutError, P2PDBError):
            async with asyncio.timeout(within):
                if self.state is None:
                    quiet = 0
                    while quiet < _QUIET_ROUNDS:
                        seen = self.requests_seen
                        await self.channel.request("token", [])
                        quiet = quiet + 1 if seen == self.requests_seen else 0
                    return
                await self.state.wait_for_in_sync()
                # the first pull may bring documents; the second one's request carries the
                # checkpoint past them (a pull that ends short sends no further request)
                for _ in range(2):
                    await self.state.re_sync()
                    await self.state.wait_for_in_sync()

    async def close(self) -> None:
        """Stop replicating with this peer (its checkpoints stay for a reconnect)."""
        if self._error_subscription is not None:
            self._error_subscription.dispose()  # what fails from here on is us closing
        await self.channel.close()  # pending requests fail at once
        if self.state is not None and not self.closed:
            # An answer that already arrived is still applied: a fork that was about to
            # be in sync when the peer left counts as in sync with it.
            with contextlib.suppress(TimeoutError, P2PDBError):
                async with asyncio.timeout(_SETTLE_ON_CLOSE):
                    await self.state.wait_for_idle()
        self._note_sync(leaving=True)
        self.closed = True
        if self._subscription is not None:
            self._subscription.dispose()
        await self.gate.close()  # requests being served are cancelled
        if self.state is not None:
            await self.state.cancel()
        try:
            await cancel_and_wait(self._tasks)
        finally:
            self._stream.on_completed()
