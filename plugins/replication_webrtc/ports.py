"""One collection's view of a connection handler, and the handlers pools share.

A :class:`CollectionPort` is what a :class:`~.pool.ReplicationPool` talks through: the peers
whose channel for its collection is open (:mod:`.multiplex` decides which channel that is),
their messages, sending, disconnecting, and the handler's diagnostics (``links``,
``own_peer_id``, ``link_to``, ...). Closing the last port of a handler closes the handler
(leaves the topic, closes every connection).

:func:`shared_handler` is how :func:`~.pool.replicate_webrtc` gets its handler: pools of one
database that replicate in the same topic through the same factory share one handler (one
signaling membership, one peer connection per remote peer); a second pool of the same
collection there gets a handler of its own, as before.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from reactivex import Observable
from reactivex.subject import Subject

from p2pdb.errors import PeerError, ValidationError
from p2pdb.replication.lanes import FlushGauge

from .channels import LinkChannel, channel_label
from .compression import FrameCompression
from .framing import JSONMessage
from .link import Link
from .multiplex import LinkRouter
from .peer import Peer, PeerMessage

__all__ = ["CollectionPort", "PortHost", "PortHub", "shared_handler"]

logger = logging.getLogger("p2pdb.webrtc.ports")
_T = TypeVar("_T")


class PortHost(Protocol):
    """What a port uses of its :class:`~.connection.ConnectionHandler`."""

    topic: str
    max_links: int

    @property
    def own_peer_id(self) -> str | None: ...
    @property
    def links(self) -> list[Link]: ...
    @property
    def pending_reconnects(self) -> list[str]: ...
    @property
    def closing(self) -> bool: ...
    def set_max_links(self, max_links: int) -> None: ...
    def has_port(self, collection: str) -> bool: ...
    def attach(self, port: CollectionPort) -> None: ...
    async def detach(self, port: CollectionPort) -> None: ...
    def drop_channel(self, link: Link, channel: LinkChannel) -> None: ...
    def on_close(self, callback: Callable[[], None]) -> None: ...


_H = TypeVar("_H", bound=PortHost)


class PortHub:
    """The ports side of a :class:`~.connection.ConnectionHandler`: its pools' ports (the
    first attached is the *lead*, whose collection labels the first channel of the links
    it initiates) and a :class:`~.multiplex.LinkRouter` per link."""

    _closing: bool

    def __init__(self) -> None:
        self._ports: dict[str, CollectionPort] = {}
        self._routers: dict[Link, LinkRouter] = {}
        self._on_close: list[Callable[[], None]] = []

    async def close(self) -> None:
        """Close the handler (the handler's own)."""
        raise NotImplementedError

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closing

    @property
    def lead(self) -> str | None:
        """The collection of the first port attached (``None``: no port)."""
        return next(iter(self._ports), None)

    def first_label(self, link: Link) -> str | None:
        """The label of the first channel of a link we initiate: ``p2pdb/1/<lead>``, asked
        when the link makes its offer (a pool attaches right after its handler joined)."""
        return None if self.lead is None else channel_label(self.lead)

    def has_port(self, collection: str) -> bool:
        """Whether a pool of ``collection`` replicates through this handler."""
        return collection in self._ports

    def attach(self, port: CollectionPort) -> None:
        """Route ``port.collection``'s channels to ``port`` from now on (a second port of
        one collection raises ``WEBRTC_SETTING_INVALID``)."""
        check_unique(dict(self._ports), port.collection)
        self._ports[port.collection] = port
        self._ports_changed()

    async def detach(self, port: CollectionPort) -> None:
        """Stop routing to ``port``; the last one closes the handler."""
        if self._ports.get(port.collection) is port:
            del self._ports[port.collection]
            self._ports_changed()
        if not self._ports:
            await self.close()

    def _ports_changed(self) -> None:
        for router in list(self._routers.values()):
            router.send_list()
            router.reconcile()

    def drop_channel(self, link: Link, channel: LinkChannel) -> None:
        """A pool drops its session on ``channel`` of ``link`` (see multiplex.py)."""
        router = self._routers.get(link)
        if router is not None:
            router.disconnect(channel)

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the handler closes."""
        self._on_close.append(callback)

    def link_to(self, peer: Peer) -> Link | None:
        """The link to ``peer`` (the handler's)."""
        raise NotImplementedError

    def compression_for(self, peer: Peer) -> FrameCompression | None:
        """The compression of the channel to ``peer`` (a port's, or a link's first)."""
        for port in self._ports.values():
            channel = port.channel_to(peer)
            if channel is not None:
                return channel.compression
        link = self.link_to(peer)
        return None if link is None else link.compression

    def port_link(self, peer: Peer) -> Link | None:
        """The link carrying ``peer``'s channel, for any port."""
        for port in self._ports.values():
            link = port.link_to(peer)
            if link is not None:
                return link
        return None

    def report_to_ports(self, error: Exception) -> None:
        """A link-level error: every port hears it."""
        for port in list(self._ports.values()):
            port.error(error)

    def add_router(
        self, link: Link, report: Callable[[PeerError], None], proof_timeout: float
    ) -> None:
        """A new link: its router."""
        self._routers[link] = LinkRouter(link, self._ports, report, proof_timeout)

    def link_opened(self, link: Link) -> None:
        """A link's first channel opened."""
        self._routers[link].opened()

    def link_ended(self, link: Link) -> None:
        """A link ended."""
        router = self._routers.pop(link, None)
        if router is not None:
            router.ended()

    def router_channel(self, link: Link, channel: LinkChannel) -> bool:
        """The remote opened one more channel on ``link``."""
        router = self._routers.get(link)
        return router is not None and router.channel(channel)

    def router_channel_opened(self, link: Link, channel: LinkChannel) -> None:
        """A channel of ``link`` opened."""
        router = self._routers.get(link)
        if router is not None:
            router.channel_opened(channel)

    def router_channel_closed(self, link: Link, channel: LinkChannel) -> None:
        """A channel of ``link`` closed while the link goes on."""
        router = self._routers.get(link)
        if router is not None:
            router.channel_closed(channel)

    def closed_now(self) -> None:
        """The handler closed: tell whoever asked."""
        for callback in self._on_close:
            callback()


class CollectionPort:
    """One collection's channels on a :class:`~.connection.ConnectionHandler`.

    Observables as the handler's (``connects``, ``disconnects``, ``messages``, ``errors``),
    for this collection's channels; ``errors`` also carries the link-level errors. Made
    inert; :meth:`attach` registers it with the handler, :meth:`close` detaches it.
    """

    def __init__(self, handler: PortHost, collection: str) -> None:
        self.handler = handler
        self.collection = collection
        self.topic = handler.topic
        self._channels: dict[Peer, tuple[Link, LinkChannel]] = {}
        self._connects: Subject[Peer] = Subject()
        self._disconnects: Subject[Peer] = Subject()
        self._messages: Subject[PeerMessage] = Subject()
        self._errors: Subject[Exception] = Subject()
        self.attached = False
        self.closed = False

    def attach(self) -> CollectionPort:
        """Register with the handler (raises ``WEBRTC_SETTING_INVALID`` when another port of
        the same collection is there)."""
        if not self.attached:
            self.handler.attach(self)
            self.attached = True
        return self

    async def close(self) -> None:
        """Detach; the last port of a handler closes it. Completes the observables."""
        if self.closed:
            return
        self.closed = True
        try:
            await self.handler.detach(self)  # (never attached: closes a handler left with none)
        finally:
            for peer in list(self._channels):
                self._emit(self._disconnects, peer)
            self._channels.clear()
            for subject in (self._connects, self._disconnects, self._messages, self._errors):
                subject.on_completed()

    # -- as the handler: what pools and diagnostics use ---------------------------------------

    @property
    def connects(self) -> Observable[Peer]:
        """A peer whose channel for this collection opened."""
        return self._connects

    @property
    def disconnects(self) -> Observable[Peer]:
        """That channel closed (or its link ended)."""
        return self._disconnects

    @property
    def messages(self) -> Observable[PeerMessage]:
        """Every message on this collection's channels, in arrival order per channel."""
        return self._messages

    @property
    def errors(self) -> Observable[Exception]:
        """Errors of this collection's channels and of the handler's links."""
        return self._errors

    @property
    def peers(self) -> list[Peer]:
        """The peers with an open channel for this collection."""
        return list(self._channels)

    @property
    def own_peer_id(self) -> str | None:
        """The handler's signaling id."""
        return self.handler.own_peer_id

    @property
    def links(self) -> list[Link]:
        """Every link of the handler (shared by its collections)."""
        return self.handler.links

    @property
    def pending_reconnects(self) -> list[str]:
        """The handler's pending reconnects."""
        return self.handler.pending_reconnects

    @property
    def max_links(self) -> int:
        """The handler's partial-mesh bound."""
        return self.handler.max_links

    def set_max_links(self, max_links: int) -> None:
        """See :meth:`.connection.ConnectionHandler.set_max_links` (shared by the pools)."""
        self.handler.set_max_links(max_links)

    def link_to(self, peer: Peer) -> Link | None:
        """The link (peer connection) carrying ``peer``'s channel (its ``engine``: the
        ``pc`` on aiortc), shared with the other collections of the handler."""
        found = self._channels.get(peer)
        return None if found is None else found[0]

    def channel_to(self, peer: Peer) -> LinkChannel | None:
        """The data channel of this collection to ``peer``."""
        found = self._channels.get(peer)
        return None if found is None else found[1]

    def gauge_for(self, peer: Peer) -> FlushGauge | None:
        """How far ``peer``'s channel took the frames sent in order (``None``: no channel)."""
        channel = self.channel_to(peer)
        return None if channel is None else channel.gauge

    def compression_for(self, peer: Peer) -> FrameCompression | None:
        """The compression of ``peer``'s channel (the handshake on it agrees on it)."""
        channel = self.channel_to(peer)
        return None if channel is None else channel.compression

    def dtls_fingerprints(self, peer: Peer) -> tuple[str, str] | None:
        """The DTLS fingerprints of the connection carrying ``peer``'s channel."""
        link = self.link_to(peer)
        return None if link is None else link.dtls_fingerprints()

    def candidate_pair(self, peer: Peer) -> tuple[str, str] | None:
        """See :meth:`.connection.ConnectionHandler.candidate_pair`."""
        link = self.link_to(peer)
        return None if link is None else link.candidate_pair()

    async def send(self, peer: Peer, message: object) -> None:
        """Send on ``peer``'s channel (``WEBRTC_PEER_GONE`` when it is not open)."""
        found = self._channels.get(peer)
        if found is None:
            raise PeerError(
                f"Peer {peer.peer_id} ({peer.connection_id}) is not connected",
                code="WEBRTC_PEER_GONE",
                peer_id=peer.peer_id,
            )
        await found[0].send_on(found[1], message)

    async def disconnect(self, peer: Peer) -> None:
        """Close ``peer``'s channel for this collection (the whole link for an RxDB peer,
        whose one channel it is; see multiplex.py)."""
        found = self._channels.get(peer)
        if found is None:
            return
        logger.info("closing the %r channel to %s on request", self.collection, peer.peer_id)
        self.handler.drop_channel(*found)

    # -- what the router tells (multiplex.ChannelPort) ---------------------------------------

    def channel_opened(self, link: Link, channel: LinkChannel) -> None:
        """A channel of this collection is open and routed here."""
        if self.closed:
            return
        self._channels[channel.peer] = (link, channel)
        self._emit(self._connects, channel.peer)

    def channel_closed(self, channel: LinkChannel) -> None:
        """That channel is gone."""
        if self._channels.pop(channel.peer, None) is not None:
            self._emit(self._disconnects, channel.peer)

    def deliver(self, channel: LinkChannel, message: JSONMessage) -> None:
        """A message on one of this collection's channels."""
        if channel.peer in self._channels:
            self._emit(self._messages, PeerMessage(channel.peer, message))

    def error(self, error: Exception) -> None:
        """An error of the handler or of this collection's channels."""
        if not self.closed:
            self._emit(self._errors, error)

    def _emit(self, subject: Subject[_T], value: _T) -> None:
        try:
            subject.on_next(value)
        except Exception:
            logger.exception("a subscriber of the %r port raised", self.collection)


# -- handlers shared by the pools of one database ------------------------------------------

_Key = tuple[int, str, int]
_Entry = tuple[weakref.ref[object], object, asyncio.Future[PortHost]]
#: (database, topic, factory) -> the database (weakly), the factory, its handler
_shared: dict[_Key, _Entry] = {}


async def shared_handler(
    database: object,
    collection: str,
    topic: str,
    factory: Callable[[str], Awaitable[_H]],
) -> CollectionPort:
    """A port of ``collection`` on the handler that ``database``'s pools share in ``topic``
    through ``factory`` (made with ``await factory(topic)`` by the first). The caller
    attaches it (:meth:`CollectionPort.attach`) once it listens, before its next ``await``:
    a second pool of the collection there gets a handler of its own."""
    key = (id(database), topic, id(factory))
    entry = _shared.get(key)
    if entry is not None and entry[0]() is database and entry[1] is factory:
        try:
            handler = await asyncio.shield(entry[2])
        except Exception:
            handler = None  # the first pool's factory call failed: try our own
        if handler is not None and not handler.closing and not handler.has_port(collection):
            return CollectionPort(handler, collection)
        if handler is not None and not handler.closing:
            return CollectionPort(await factory(topic), collection)  # not shared
    made: asyncio.Future[PortHost] = asyncio.get_running_loop().create_future()
    _shared[key] = (weakref.ref(database), factory, made)
    try:
        handler = await factory(topic)
    except BaseException as error:
        if key in _shared and _shared[key][2] is made:
            del _shared[key]
        made.set_exception(error if isinstance(error, Exception) else RuntimeError("canceled"))
        made.exception()  # retrieved: nobody may be waiting
        raise
    made.set_result(handler)

    def forget() -> None:
        if key in _shared and _shared[key][2] is made:
            del _shared[key]

    handler.on_close(forget)
    return CollectionPort(handler, collection)


def check_unique(ports: dict[str, object], collection: str) -> None:
    """Raise ``WEBRTC_SETTING_INVALID`` when ``collection`` has a port already."""
    if collection in ports:
        raise ValidationError(
            f"Collection {collection!r} already replicates through this connection handler; "
            "cancel that pool first",
            code="WEBRTC_SETTING_INVALID",
            setting="connection",
        )
