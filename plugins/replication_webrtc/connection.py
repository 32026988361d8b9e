"""WebRTC connections to the peers of one topic, following simple-peer/RxDB 17.6 rules.

A :class:`ConnectionHandler` joins a signaling room and keeps one link (:class:`~.link.Link`
over an engine, :mod:`.engine`) per remote peer it links with (see mesh.py):

- The **initiator** of a pair is the side whose remote peer id is greater
  (string compare of signaling ids). It connects when the remote id appears in
  ``joined``, with a fresh ``connectionId`` (10 a-z) on every signal of that
  attempt, and sends ``{"type": "offer", "sdp"}`` with every candidate inside
  the SDP (no trickle before the offer). It drops signals with another ``connectionId``.
  After any drop it retries: 0.5 s, doubling up to 15 s (reset once connected), each
  time with a new ``connectionId``.
- The **responder** builds a link only on an ``offer`` with a new ``connectionId``
  (replacing the older one) and echoes that id. Candidates trickled before their offer
  are kept for it (RxDB sends them that way). It never initiates.
- A link that does not open within ``connect_timeout`` is closed
  (``WEBRTC_CONNECT_TIMEOUT``). A peer that leaves the room is dropped only if
  it never connected; a working link survives a signaling outage, and after
  the socket reconnects (with a new own id) links are keyed by
  ``(own id, remote id)`` so old working links are left alone.

Events are reactivex observables; every ``connects`` emission is followed by
exactly one ``disconnects`` emission for the same :class:`Peer` (also on
:meth:`ConnectionHandler.close`). Messages are de-chunked and emitted in
arrival order on the event loop; subscribers that raise are logged, never propagated.
Pools talk through a :class:`~.ports.CollectionPort` per collection: several collections
share the handler and each link, a channel each (:mod:`.multiplex`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TypeVar

from reactivex import Observable
from reactivex.subject import Subject

from p2pdb.backoff import Backoff
from p2pdb.errors import PeerError, ReplicationError
from p2pdb.tokens import random_token

from .aiortc_engine import AiortcEngine
from .candidates import EarlyCandidates
from .engine import EngineFactory, LinkSettings
from .framing import JSONMessage
from .link import Link, LinkCallbacks
from .mesh import DEFAULT_MAX_LINKS, check_max_links, choose_links, surplus_links
from .peer import Peer, PeerMessage
from .ports import PortHub
from .signaling_client import SignalingAccess, SignalingClient

__all__ = ["ConnectionHandler"]

logger = logging.getLogger("p2pdb.webrtc.connection")

RECONNECT_DELAY_MIN = 0.5
RECONNECT_DELAY_MAX = 15.0

_T = TypeVar("_T")


class ConnectionHandler(PortHub):
    """The WebRTC links of one topic; see the module docstring for the rules.

    Usually made by :func:`aiortc_connection_handler`. Observables, about each link's first
    channel: ``connects`` (a :class:`Peer` whose channel just opened), ``disconnects`` (a
    connected one that closed, failed or was dropped), ``messages`` (:class:`PeerMessage`,
    in arrival order; not those routed to a pool's port), ``errors`` (typed
    :class:`~p2pdb.errors.PeerError`: bad frames, timeouts, ...). All complete when
    :meth:`close` returns. Subscribing right after ``await factory(topic)`` misses nothing.
    """

    def __init__(
        self,
        topic: str,
        signaling_url: str | Sequence[str],
        settings: LinkSettings | None = None,
        *,
        ping_interval: float = 60.0,
        signaling: SignalingAccess | None = None,
        max_links: int = DEFAULT_MAX_LINKS,
        engine: EngineFactory = AiortcEngine,
    ) -> None:
        self.topic = topic
        self.max_links = check_max_links(max_links)  # see mesh.py; set_max_links() changes it
        self.engine = engine  # under each link: AiortcEngine or native_link.NativeEngine
        self._settings = settings or LinkSettings()
        self._client = SignalingClient(
            signaling_url,
            topic,
            on_ready=self._on_ready,
            on_members=self._on_members,
            on_signal=self._on_signal,
            on_lost=self._on_lost,
            ping_interval=ping_interval,
            access=signaling,
        )
        self._callbacks = LinkCallbacks(
            send_signal=self._send_signal,
            opened=self._link_opened,
            message=self._link_message,
            error=self._link_error,
            ended=self._link_ended,
            label=self.first_label,
            channel=self.router_channel,
            channel_opened=self.router_channel_opened,
            channel_closed=self.router_channel_closed,
        )
        PortHub.__init__(self)
        self._connects: Subject[Peer] = Subject()
        self._disconnects: Subject[Peer] = Subject()
        self._messages: Subject[PeerMessage] = Subject()
        self._errors: Subject[Exception] = Subject()
        self._links: dict[tuple[str, str], Link] = {}  # current link per (own id, remote id)
        self._connected: dict[Peer, Link] = {}
        self._link_tasks: set[asyncio.Task[None]] = set()  # includes links still tearing down
        self._members: set[str] = set()
        self._wanted: frozenset[str] = frozenset()  # the members the mesh links us with
        self._early_candidates = EarlyCandidates()
        self._reconnects: dict[str, asyncio.Task[None]] = {}
        self._reconnect_delay: dict[str, Backoff] = {}
        self._started = False
        self._closing = False
        self._closed = asyncio.Event()

    # -- public API -----------------------------------------------------------------------

    @property
    def connects(self) -> Observable[Peer]:
        """Emits a :class:`Peer` when its data channel opens."""
        return self._connects

    @property
    def disconnects(self) -> Observable[Peer]:
        """Emits a previously connected :class:`Peer` when its link ends."""
        return self._disconnects

    @property
    def messages(self) -> Observable[PeerMessage]:
        """Emits every de-chunked message, in arrival order."""
        return self._messages

    @property
    def errors(self) -> Observable[Exception]:
        """Emits typed errors: malformed frames, timeouts, failed connections.

        They are not logged here (a :class:`ReplicationPool` logs each one once)."""
        return self._errors

    @property
    def own_peer_id(self) -> str | None:
        """Our signaling id, ``None`` while the signaling socket is down."""
        return self._client.own_peer_id

    @property
    def peers(self) -> list[Peer]:
        """The peers with an open data channel."""
        return list(self._connected)

    def link_to(self, peer: Peer) -> Link | None:
        """The open link to ``peer`` (for diagnostics: its ``engine``), also for the peer of
        a collection's channel."""
        return self._connected.get(peer) or self.port_link(peer)

    @property
    def links(self) -> list[Link]:
        """Every link, open or still connecting."""
        return list(self._links.values())

    @property
    def pending_reconnects(self) -> list[str]:
        """The remote ids this handler will try to reach again after a delay."""
        return list(self._reconnects)

    async def start(self, join_timeout: float | None = None) -> None:
        """Connect to signaling and wait until joined to the topic.

        Raises :class:`ReplicationError` (``WEBRTC_SIGNALING_UNREACHABLE``) and
        closes the handler if that takes longer than ``join_timeout`` seconds.
        """
        if self._started:
            return
        self._started = True
        self._client.start()
        try:
            async with asyncio.timeout(join_timeout):
                await self._client.wait_joined()
        except TimeoutError:
            await self.close()
            raise ReplicationError(
                f"Could not join topic {self.topic!r} on signaling server "
                f"{self._client.url} within {join_timeout} s; is the server running?",
                code="WEBRTC_SIGNALING_UNREACHABLE",
                url=self._client.url,
                topic=self.topic,
            ) from None

    async def send(self, peer: Peer, message: object) -> None:
        """Send a JSON-serializable message to ``peer`` (chunked, flow controlled).

        Raises :class:`PeerError` (``WEBRTC_PEER_GONE``) if the link is not open,
        :class:`ValidationError` (``WEBRTC_MESSAGE_NOT_JSON``) for a bad message.
        """
        link = self._connected.get(peer)
        if link is None:
            raise PeerError(
                f"Peer {peer.peer_id} ({peer.connection_id}) is not connected",
                code="WEBRTC_PEER_GONE",
                peer_id=peer.peer_id,
            )
        await link.send(message)

    async def disconnect(self, peer: Peer) -> None:
        """Close the link to ``peer`` (the initiator side reconnects later)."""
        link = self._connected.get(peer)
        if link is None:
            return
        logger.info("disconnecting peer %s on request", peer.peer_id)
        link.end()
        await link.wait_closed()

    def dtls_fingerprints(self, peer: Peer) -> tuple[str, str] | None:
        """``(local, remote)`` DTLS certificate fingerprints of the open link to ``peer``
        (what the handshake signs; see :meth:`Link.dtls_fingerprints`)."""
        link = self._connected.get(peer)
        return None if link is None else link.dtls_fingerprints()

    def candidate_pair(self, peer: Peer) -> tuple[str, str] | None:
        """Types of the selected ICE candidates, e.g. ``("relay", "host")`` (diagnostic;
        reads aiortc/aioice internals; ``None`` when unknown)."""
        link = self._connected.get(peer)
        return None if link is None else link.candidate_pair()

    async def close(self) -> None:
        """Leave the topic, close every link and the socket; complete the observables."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        for task in self._reconnects.values():
            task.cancel()
        for link in list(self._links.values()):
            link.end()
        try:
            await self._client.close()
            pending = set(self._link_tasks) | set(self._reconnects.values())
            if pending:
                await asyncio.wait(pending)
        finally:  # also if our caller is cancelled: a second close() then returns
            for subject in (self._connects, self._disconnects, self._messages, self._errors):
                subject.on_completed()
            self.closed_now()
            self._closed.set()
        logger.info("connection handler for %r closed", self.topic)  # not when cancelled

    async def __aenter__(self) -> ConnectionHandler:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- signaling callbacks --------------------------------------------------------------

    def _on_ready(self, own_id: str) -> None:
        # Links that never connected under an older id can no longer get signals.
        for link in list(self._links.values()):
            if link.local_id != own_id and not link.connected:
                link.end()
        for task in self._reconnects.values():
            task.cancel()
        self._reconnects.clear()
        self._early_candidates.clear()
        self._members, self._wanted = set(), frozenset()  # until the next `joined`

    def _on_lost(self) -> None:
        logger.info("signaling lost; keeping %d open link(s)", len(self._connected))

    def _on_members(self, others: list[str]) -> None:
        own = self._client.own_peer_id
        if own is None or self._closing:
            return
        self._members = set(others)
        self._wanted = wanted = choose_links(own, others, self.max_links)  # all, if few
        for link in list(self._links.values()):
            gone = link.remote_id not in self._members or link.initiator
            if not link.connected and link.remote_id not in wanted and gone:
                link.end()
        for remote_id in list(self._reconnects):
            if remote_id not in wanted:
                self._reconnects.pop(remote_id).cancel()
                self._reconnect_delay.pop(remote_id, None)
        self._early_candidates.keep_only(self._members)
        for remote_id in sorted(wanted):
            if self._should_initiate(own, remote_id):
                self._new_link(own, remote_id, initiator=True, connection_id=random_token(10))
        self._drop_surplus()

    def set_max_links(self, max_links: int) -> None:
        """Change ``max_links`` (see mesh.py) and re-choose the links at once."""
        self.max_links = check_max_links(max_links)
        if self._client.joined:
            self._on_members(list(self._members))

    def _should_initiate(self, own: str, remote_id: str) -> bool:  # ours to make, wanted, none
        if self._closing or remote_id <= own or remote_id not in self._wanted:
            return False
        return (own, remote_id) not in self._links and remote_id not in self._reconnects

    def _drop_surplus(self) -> None:
        for link in surplus_links(self._wanted, self._members, list(self._connected.values())):
            link.end()  # the mesh no longer wants it, and every link it wants is open

    def _on_signal(self, frame: dict[str, Any]) -> None:
        own = self._client.own_peer_id
        if own is None or self._closing:
            return
        remote_id: str = frame["senderPeerId"]
        data = frame.get("data")
        connection_id = frame.get("connectionId")
        if not isinstance(data, dict) or not (
            connection_id is None or isinstance(connection_id, str)
        ):
            logger.warning("malformed signal from %s ignored", remote_id)
            return
        link = self._links.get((own, remote_id))
        if remote_id > own:  # we initiate this pair
            if link is None or (
                connection_id is not None and connection_id != link.signal_connection_id
            ):
                logger.debug("stale signal from %s dropped", remote_id)
                return
        elif link is None or link.signal_connection_id != connection_id:
            if data.get("type") != "offer":
                if remote_id in self._members:
                    self._early_candidates.keep(remote_id, connection_id, data)
                return
            link = self._new_link(own, remote_id, initiator=False, connection_id=connection_id)
            link.queue_signal(data)
            for candidate in self._early_candidates.take(remote_id, connection_id):
                link.queue_signal(candidate)
            return
        link.queue_signal(data)

    # -- links ----------------------------------------------------------------------------

    def _new_link(
        self, own: str, remote_id: str, *, initiator: bool, connection_id: str | None
    ) -> Link:
        previous = self._links.get((own, remote_id))
        if previous is not None:
            previous.end()
        link = Link(
            self._callbacks,
            self._settings,
            local_id=own,
            remote_id=remote_id,
            initiator=initiator,
            connection_id=connection_id,
            engine=self.engine,
        )
        self.add_router(link, self._report_all, self._settings.connect_timeout)
        self._links[link.key] = link
        task = link.start()
        self._link_tasks.add(task)
        task.add_done_callback(self._link_tasks.discard)
        logger.debug(
            "new %s link to %s (connectionId %s)",
            "initiator" if initiator else "responder",
            remote_id,
            connection_id,
        )
        return link

    def _schedule_reconnect(self, remote_id: str) -> None:
        own = self._client.own_peer_id
        if own is None or not self._should_initiate(own, remote_id):
            return
        backoff = self._reconnect_delay.setdefault(
            remote_id, Backoff(RECONNECT_DELAY_MIN, RECONNECT_DELAY_MAX)
        )
        delay = backoff.next_delay()
        logger.info("reconnecting to %s in %.1f s", remote_id, delay)
        task = asyncio.get_running_loop().create_task(self._reconnect_later(remote_id, delay))
        self._reconnects[remote_id] = task

    async def _reconnect_later(self, remote_id: str, delay: float) -> None:
        try:
            await asyncio.sleep(delay)
        finally:
            if self._reconnects.get(remote_id) is asyncio.current_task():
                del self._reconnects[remote_id]
        own = self._client.own_peer_id
        if own is not None and self._should_initiate(own, remote_id):
            self._new_link(own, remote_id, initiator=True, connection_id=random_token(10))

    # -- link callbacks -------------------------------------------------------------------

    async def _send_signal(self, link: Link, data: dict[str, Any]) -> None:
        """Relay a link's signal through the signaling server (dropped while offline)."""
        await self._client.send_signal(link.remote_id, data, link.signal_connection_id)

    def _link_opened(self, link: Link) -> None:
        """A link's data channel opened: announce the peer."""
        self._reconnect_delay.pop(link.remote_id, None)
        self._connected[link.peer] = link
        logger.info("peer %s connected (%s)", link.remote_id, link.peer.connection_id)
        self._emit(self._connects, link.peer)
        self.link_opened(link)
        self._drop_surplus()

    def _link_message(self, link: Link, message: JSONMessage) -> None:
        """A link delivered a complete message."""
        self._emit(self._messages, PeerMessage(link.peer, message))

    def _link_error(self, link: Link, error: PeerError) -> None:
        """A link reports an error (not while closing: those are expected)."""
        if not self._closing:
            self._report_all(error)

    def _report_all(self, error: PeerError) -> None:
        self._emit(self._errors, error)
        self.report_to_ports(error)

    def _link_ended(self, link: Link) -> None:
        """Forget an ended link, announce it, and let the initiator retry."""
        if self._links.get(link.key) is link:
            del self._links[link.key]
        self.link_ended(link)
        if self._connected.pop(link.peer, None) is not None:
            logger.info("peer %s disconnected", link.remote_id)
            self._emit(self._disconnects, link.peer)
        if link.initiator:
            self._schedule_reconnect(link.remote_id)

    def _emit(self, subject: Subject[_T], value: _T) -> None:
        try:
            subject.on_next(value)
        except Exception:
            logger.exception("a subscriber of the connection handler raised")
