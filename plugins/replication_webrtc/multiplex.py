"""Several collections over one peer connection: which channel carries which collection.

When pools of one database replicate several collections in one topic, they share one
:class:`~.connection.ConnectionHandler` (:mod:`.ports`): one signaling membership and one
peer connection per remote peer, one ordered data channel per collection on it (SCTP
streams are independent, so one collection's bulk sync never holds up another's). The rules
(``p2pdb/1``), for one link:

- **The first channel** is opened by the initiator as always, labelled
  ``p2pdb/1/<collection>`` (the first pool attached to its handler) when it has pools. An
  RxDB peer takes any label, and replicates over it the one collection of its topic.
- **Proof.** A responder that sees such a label knows the initiator is p2pdb: it opens the
  **control channel** ``p2pdb/1``, which proves it is p2pdb to the initiator (only p2pdb
  opens a channel so labelled; RxDB peers never open a second channel). Nothing else is
  opened towards a peer that did not prove it is p2pdb: simple-peer would take a second
  channel over.
- **Control.** Each side sends ``{"collections": [...]}`` (the collections it replicates
  on this handler) on the control channel, and again whenever that changes; the initiator
  first, the responder in answer. On every channel after the first, the side that did not
  open it speaks first (the collection channels' responder sends :data:`READY` before its
  session starts): a native peer may lose what arrives on a channel the remote opened
  before its callbacks are set, so the opener sends only once it heard the other side.
- **Collection channels.** Only the initiator opens ``p2pdb/1/<name>`` channels: one for
  each collection both sides list that has none yet (so two sides never open one at once).
  It closes the ones the responder no longer lists (the first channel too, when the
  responder does not replicate that collection); one that closes while both still list its
  collection is opened again after a backoff (0.5 s doubling to 15 s).
- **Routing.** A channel goes to this side's pool of the collection its label names. One for
  a collection without a pool here is *held* (:mod:`.channels`: bounded, delivered when
  the pool attaches, or closed by the initiator). The first channel of an RxDB peer (any
  other label) goes to the one pool of the handler; with several pools in the topic it is
  refused (``WEBRTC_COLLECTIONS_AMBIGUOUS``): which collection an RxDB peer replicates is not
  on the wire, and collections are never mixed. As initiator with several pools, the first
  channel is held until the responder proves it is p2pdb (``connect_timeout`` at most).
- **What ends what.** A pool's session disconnecting (a protocol violation, a heartbeat
  timeout, an untrusted key) closes its collection's channel only, on a link whose peer
  proved it is p2pdb: the other collections go on, and the initiator opens the channel
  again after the backoff. The control channel closing, the connection failing or closing,
  or a bad frame on any channel ends the link (every collection's channel), and the
  initiator reconnects as for any link. With an RxDB peer there is one channel, and it
  closing ends the link, as before.

Hostile input is bounded: at most :data:`MAX_CHANNELS` channels open on a link at once, at
most :data:`MAX_HELD` held channels (more: ``WEBRTC_CHANNEL_REFUSED``, that channel
closed), a control channel or collection channel opened by the side that must not open it
is refused (``WEBRTC_CHANNEL_REFUSED``); past ``MAX_CHANNELS`` open or ``MAX_HELD``
refused the link ends (``WEBRTC_PEER_OVER_LIMIT``, ``limit="channels"``). A malformed
control message ends the link (``WEBRTC_PROTOCOL_VIOLATION``). Nothing on a held channel
reaches a collection.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from p2pdb.backoff import Backoff
from p2pdb.errors import PeerError

from .channels import CONTROL_LABEL, LinkChannel, channel_label
from .framing import JSONMessage
from .link import Link

__all__ = ["MAX_CHANNELS", "MAX_HELD", "MAX_NAMES", "ChannelPort", "LinkRouter"]

logger = logging.getLogger("p2pdb.webrtc.multiplex")

#: Channels one link may have open at once (the first, the control channel, the others).
MAX_CHANNELS = 64
#: Channels for collections without a pool here, held at once on one link.
MAX_HELD = 8
#: Collection names in one control message.
MAX_NAMES = 256
#: What the side that did not open a channel sends first on it: the other side sends nothing
#: before it (libdatachannel may lose what comes on a remote's channel before it is taken).
READY = {"p2pdb": "ready"}
REOPEN_DELAY_MIN = 0.5
REOPEN_DELAY_MAX = 15.0


class ChannelPort(Protocol):
    """What a router needs of one collection's port (:class:`~.ports.CollectionPort`)."""

    def channel_opened(self, link: Link, channel: LinkChannel) -> None:
        """A channel of this collection is open and routed here."""
        ...

    def channel_closed(self, channel: LinkChannel) -> None:
        """That channel is gone (closed, dropped, or its link ended)."""
        ...

    def deliver(self, channel: LinkChannel, message: JSONMessage) -> None:
        """A message arrived on it."""
        ...


class LinkRouter:
    """The channels of one link and the collections they carry; see the module docstring."""

    def __init__(
        self,
        link: Link,
        ports: Mapping[str, ChannelPort],
        report: Callable[[PeerError], None],
        proof_timeout: float,
    ) -> None:
        self.link = link
        self.control: LinkChannel | None = None
        self.theirs: frozenset[str] | None = None
        """The collections the remote lists (``None``: no list yet)."""
        self.by_collection: dict[str, LinkChannel] = {}
        """The channel of each collection on this link (routed or held)."""
        self._ports = ports  # the handler's, live: the first is the lead
        self._report = report
        self._proof_timeout = proof_timeout
        self._routed: dict[LinkChannel, ChannelPort] = {}
        self._connected: set[LinkChannel] = set()
        self._gate: asyncio.TimerHandle | None = None
        self._backoff: dict[str, Backoff] = {}
        self._reopen: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._refused = 0
        self._unplaced = False
        self._awaiting: set[LinkChannel] = set()  # ours, until the responder's READY
        self._had: set[str] = set()  # collections that had a channel here (reopen: backoff)
        self._ended = False

    # -- what the link and the handler tell ------------------------------------------------

    def opened(self) -> None:
        """The link's first channel opened."""
        primary = self.link.primary
        if primary is None or not self._ports:
            self._unplaced = primary is not None  # until a pool attaches (reconcile)
            return  # a handler without pools: its own observables only (connection.py)
        self._unplaced = False
        name = primary.collection
        if name is None:  # an RxDB peer's label (or made before any pool attached)
            if len(self._ports) == 1:
                self.by_collection[next(iter(self._ports))] = primary
                self._place(primary, next(iter(self._ports)))
            else:
                self._refuse_rxdb()
            return
        self.by_collection[name] = primary
        if not self.link.initiator:
            self.link.multiplexed = True  # its label proves the initiator is p2pdb
            self.control = control = self.link.open_channel(CONTROL_LABEL)
            control.route(self._control_message)
            self._place(primary, name)
        elif len(self._ports) == 1:
            self._place(primary, name)
        else:  # held until the responder proves it is p2pdb
            primary.route(None)
            loop = asyncio.get_running_loop()
            self._gate = loop.call_later(self._proof_timeout, self._unproven)

    def channel(self, channel: LinkChannel) -> bool:
        """The remote opened ``channel``: take it (routed or held) or refuse it."""
        if self._ended:
            return False
        if len(self.link.extra_channels) + 2 > MAX_CHANNELS:
            self._fail(
                f"Peer {self.link.remote_id} opened more than {MAX_CHANNELS} data channels",
                "WEBRTC_PEER_OVER_LIMIT",
                limit="channels",
            )
            return False
        primary = self.link.primary
        if channel.label == CONTROL_LABEL:
            if (
                not self.link.initiator
                or self.control is not None
                or primary is None
                or primary.collection is None
            ):
                return self._refuse(channel, "a control channel it may not open")
            self.link.multiplexed = True
            self.control = channel
            channel.route(self._control_message)
            if self._gate is not None:  # proven p2pdb: the first channel may carry its collection
                self._gate.cancel()
                self._gate = None
                self._place(primary, primary.collection)
            return True
        name = channel.collection
        if name is None or not self.link.multiplexed:
            logger.info("extra data channel %r from %s refused", channel.label, self.link.remote_id)
            return False  # an RxDB peer's second channel: closed, as before
        if self.link.initiator:
            return self._refuse(channel, f"a channel for {name!r} (only we open those)")
        held = sum(1 for c in self.by_collection.values() if c not in self._routed)
        if name not in self._ports and held >= MAX_HELD:
            return self._refuse(
                channel, f"more than {MAX_HELD} channels for collections not replicated here"
            )
        old = self.by_collection.get(name)
        if old is not None:
            self._drop(old)  # the initiator replaced it
        self.by_collection[name] = channel
        self._place(channel, name)
        return True

    def channel_opened(self, channel: LinkChannel) -> None:
        """One more channel opened (ours or the remote's)."""
        if channel is self.control:
            if self.link.initiator:
                self.send_list()  # the receiver speaks first (see READY)
        elif not channel.opened_here and channel is not self.link.primary:
            channel.send_now(READY)  # before anything of the session on it
            self._connect(channel)
        else:
            self._connect(channel)

    def channel_closed(self, channel: LinkChannel) -> None:
        """A channel closed while the link goes on."""
        if channel is self.control:
            self.control = None
            self.link.end()  # the link's lifeline between p2pdb peers
            return
        self._unroute(channel)
        name = channel.collection or next(
            (n for n, c in self.by_collection.items() if c is channel), None
        )
        if name is not None and self.by_collection.get(name) is channel:
            del self.by_collection[name]
            self.reconcile()

    def disconnect(self, channel: LinkChannel) -> None:
        """A pool drops its session on ``channel``: close that channel only, when the peer
        proved it is p2pdb; else end the link (its one channel)."""
        if self.link.multiplexed:
            self._drop(channel)
            self.reconcile()  # as initiator: open it again after the backoff
        else:
            self.link.end()

    def ended(self) -> None:
        """The link ended: every routed channel is gone."""
        self._ended = True
        if self._gate is not None:
            self._gate.cancel()
        for timer in self._reopen.values():
            timer.cancel()
        for task in self._tasks:
            task.cancel()
        for channel in list(self._routed):
            self._unroute(channel)
        self.by_collection.clear()

    # -- the lists ---------------------------------------------------------------------------

    def send_list(self) -> None:
        """Tell the remote which collections we replicate here (on the control channel)."""
        control = self.control
        if control is None or not control.opened or control.closed or self._ended:
            return
        if not self.link.initiator and self.theirs is None:
            return  # we answer the initiator's first list (the receiver speaks first)
        message = {"collections": list(self._ports)}
        task = asyncio.get_running_loop().create_task(self._send(control, message))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, control: LinkChannel, message: object) -> None:
        try:
            await self.link.send_on(control, message)
        except PeerError as error:
            logger.debug("collection list to %s not sent: %s", self.link.remote_id, error)

    def _control_message(self, _channel: LinkChannel, message: JSONMessage) -> None:
        names = message.get("collections") if isinstance(message, dict) else None
        if (
            not isinstance(names, list)
            or len(names) > MAX_NAMES
            or not all(isinstance(n, str) and 0 < len(n) <= 200 for n in names)
        ):
            self._fail(
                f"Peer {self.link.remote_id} sent a malformed control message: {message!r:.80}",
                "WEBRTC_PROTOCOL_VIOLATION",
            )
            return
        if self.theirs is None and not self.link.initiator:
            self.theirs = frozenset(names)
            self.send_list()  # our answer to its first list
        self.theirs = frozenset(names)
        logger.debug("peer %s replicates %s here", self.link.remote_id, sorted(self.theirs))
        self.reconcile()

    def reconcile(self) -> None:
        """Bring the channels in line with both lists: route held channels whose pool is
        here now, drop those whose pool left; as initiator, close the channels the remote no
        longer lists and open those both list."""
        if self._ended:
            return
        if self._unplaced and self._ports:
            self.opened()  # opened before any pool attached
        for name, channel in list(self.by_collection.items()):
            port = self._ports.get(name)
            if channel in self._routed and self._routed[channel] is not port:
                self._drop(channel)  # its pool left
            elif (
                channel not in self._routed
                and port is not None
                and self._gate is None
                and (channel not in self._awaiting)
            ):
                self._place(channel, name)
        theirs = self.theirs
        if not self.link.initiator or not self.link.multiplexed or theirs is None:
            return
        for name, channel in list(self.by_collection.items()):
            if name not in theirs:
                self._drop(channel)
        for name in self._ports:
            if name in theirs and name not in self.by_collection and name not in self._reopen:
                self._open(name)

    def _open(self, name: str) -> None:
        backoff = self._backoff.get(name)
        if backoff is None:
            self._backoff[name] = backoff = Backoff(REOPEN_DELAY_MIN, REOPEN_DELAY_MAX)
            if name not in self._had:  # the first channel of that collection: now
                self._open_now(name)
                return
        delay = backoff.next_delay()  # a new list may come meanwhile (a pool leaving)
        logger.info("reopening the %r channel to %s in %.1f s", name, self.link.remote_id, delay)
        loop = asyncio.get_running_loop()
        self._reopen[name] = loop.call_later(delay, self._open_now, name)

    def _open_now(self, name: str) -> None:
        self._reopen.pop(name, None)
        theirs = self.theirs or frozenset()
        if self._ended or name in self.by_collection or name not in self._ports:
            return
        if name not in theirs or len(self.link.extra_channels) + 2 > MAX_CHANNELS:
            return
        logger.debug("opening the %r channel to %s", name, self.link.remote_id)
        try:
            channel = self.link.open_channel(channel_label(name))
        except Exception as error:  # the connection is going away underneath
            logger.info("no %r channel to %s: %r", name, self.link.remote_id, error)
            return
        self.by_collection[name] = channel
        self._had.add(name)
        self._awaiting.add(channel)
        channel.route(self._await_ready)  # the responder speaks first: then it is placed

    def _await_ready(self, channel: LinkChannel, message: JSONMessage) -> None:
        name = channel.collection
        if message != READY or name is None or self.by_collection.get(name) is not channel:
            self._fail(
                f"Peer {self.link.remote_id} sent {message!r:.60} on channel {channel.label!r} "
                "before it was ready",
                "WEBRTC_PROTOCOL_VIOLATION",
            )
            return
        self._awaiting.discard(channel)
        self._place(channel, name)

    # -- routing -------------------------------------------------------------------------

    def _place(self, channel: LinkChannel, name: str) -> None:
        self._had.add(name)
        port = self._ports.get(name)
        if port is None:
            channel.route(None)  # held: its pool may attach (bounded, channels.py)
            return
        self._routed[channel] = port
        channel.route(port.deliver)
        self._connect(channel)

    def _connect(self, channel: LinkChannel) -> None:
        port = self._routed.get(channel)
        if port is not None and channel.opened and channel not in self._connected:
            self._connected.add(channel)
            port.channel_opened(self.link, channel)

    def _unroute(self, channel: LinkChannel) -> None:
        port = self._routed.pop(channel, None)
        channel.route(None)
        if port is not None and channel in self._connected:
            self._connected.discard(channel)
            port.channel_closed(channel)

    def _drop(self, channel: LinkChannel) -> None:
        """Close ``channel`` quietly (its session ends without an error)."""
        self._unroute(channel)
        self._awaiting.discard(channel)
        for name, held in list(self.by_collection.items()):
            if held is channel:
                del self.by_collection[name]
        channel.close()

    def _refuse(self, channel: LinkChannel, what: str) -> bool:
        self._refused += 1
        if self._refused > MAX_HELD:
            self._fail(
                f"Peer {self.link.remote_id} opened more than {MAX_HELD} channels that were "
                "refused",
                "WEBRTC_PEER_OVER_LIMIT",
                limit="channels",
            )
            return False
        self._report(
            PeerError(
                f"Peer {self.link.remote_id} opened {what}: channel {channel.label!r:.120} refused",
                code="WEBRTC_CHANNEL_REFUSED",
                peer_id=self.link.remote_id,
            )
        )
        return False

    def _refuse_rxdb(self) -> None:
        self._fail(
            f"Peer {self.link.remote_id} did not prove it is p2pdb (an RxDB peer?), and "
            f"{len(self._ports)} collections of this database replicate in this topic "
            f"({', '.join(self._ports)}): which one it replicates is unknown, so none does. "
            "Give each collection its own topic to replicate with RxDB peers.",
            "WEBRTC_COLLECTIONS_AMBIGUOUS",
        )

    def _unproven(self) -> None:
        self._gate = None
        if not self._ended and not self.link.multiplexed:
            self._refuse_rxdb()

    def _fail(self, message: str, code: str, **parameters: object) -> None:
        self._report(PeerError(message, code=code, peer_id=self.link.remote_id, **parameters))
        self.link.end()
