"""multiplex.py's rules and channels.py's holding, over a scripted engine (no network)."""

from __future__ import annotations

import asyncio
from typing import Any

from test_link_engine import Channel, Owner, ScriptedEngine

from p2pdb.errors import PeerError
from p2pdb.plugins.replication_webrtc.channels import (
    HELD_MESSAGES,
    ChannelHooks,
    LinkChannel,
    channel_label,
    parse_label,
)
from p2pdb.plugins.replication_webrtc.engine import LinkSettings
from p2pdb.plugins.replication_webrtc.framing import JSONMessage
from p2pdb.plugins.replication_webrtc.link import Link, LinkCallbacks
from p2pdb.plugins.replication_webrtc.multiplex import MAX_HELD, READY, LinkRouter
from p2pdb.plugins.replication_webrtc.peer import Peer


class Port:
    def __init__(self) -> None:
        self.open: list[LinkChannel] = []
        self.closed: list[LinkChannel] = []
        self.messages: list[JSONMessage] = []

    def channel_opened(self, link: Link, channel: LinkChannel) -> None:
        self.open.append(channel)

    def channel_closed(self, channel: LinkChannel) -> None:
        self.closed.append(channel)

    def deliver(self, channel: LinkChannel, message: JSONMessage) -> None:
        self.messages.append(message)


class Rig:
    """A link over a scripted engine, its router and ports, wired as the handler does."""

    def __init__(self, *, initiator: bool, ports: list[str], proof_timeout: float = 5.0) -> None:
        self.owner = Owner()
        self.ports: dict[str, Port] = {name: Port() for name in ports}
        self.errors: list[PeerError] = []
        ScriptedEngine.made.clear()
        base = self.owner.callbacks()
        callbacks = LinkCallbacks(
            send_signal=base.send_signal,
            opened=lambda link: self.router.opened(),
            message=base.message,
            error=lambda link, error: self.errors.append(error),
            ended=lambda link: self.router.ended(),
            label=lambda link: channel_label(next(iter(self.ports))) if self.ports else None,
            channel=lambda link, channel: self.router.channel(channel),
            channel_opened=lambda link, channel: self.router.channel_opened(channel),
            channel_closed=lambda link, channel: self.router.channel_closed(channel),
        )
        self.link = Link(
            callbacks,
            LinkSettings(connect_timeout=10),
            local_id="a",
            remote_id="b",
            initiator=initiator,
            connection_id="c",
            engine=ScriptedEngine,
        )
        self.router = LinkRouter(self.link, self.ports, self.errors.append, proof_timeout)
        self.engine = ScriptedEngine.made[0]

    async def open(self, label: str | None = None) -> None:
        self.link.start()
        if self.link.initiator:
            await asyncio.wait_for(self.owner.signals.get(), 5)
        else:
            self.link.queue_signal({"type": "offer", "sdp": "x"})
            await asyncio.wait_for(self.owner.signals.get(), 5)
        if label is not None:
            self.engine.channel.label = label
            assert self.link.primary is not None
            self.link.primary.label = label
            self.link.primary.collection = parse_label(label)
        self.engine.events.opened()

    def remote_channel(self, label: str) -> tuple[Channel, Any]:
        """The remote opens a channel: what the engine gets back (``None``: refused)."""
        raw = Channel()
        raw.label = label
        events = self.engine.events.extra_channel(raw)
        if events is not None:
            events.opened()
        return raw, events

    def codes(self) -> list[str]:
        return [error.code for error in self.errors]


def test_labels() -> None:
    assert channel_label("todos") == "p2pdb/1/todos"
    assert parse_label("p2pdb/1/todos") == "todos"
    assert parse_label("p2pdb/1") is None and parse_label("p2pdb/1/") is None
    assert parse_label("0" * 40) is None and parse_label("p2pdb/1/" + "x" * 201) is None


async def test_a_held_channel_keeps_messages_in_order_then_hands_them_over() -> None:
    failures: list[PeerError] = []
    hooks = ChannelHooks(lambda c: None, lambda c: None, lambda c, e: failures.append(e))
    channel = LinkChannel(
        Channel(), "p2pdb/1/x", Peer("b", "c"), LinkSettings(), hooks, frame_limit=lambda: 1000
    )
    channel.route(None)
    channel.feed('{"n":1}')
    channel.feed('{"n":2}')
    got: list[JSONMessage] = []
    channel.route(lambda _c, m: got.append(m))
    channel.feed('{"n":3}')
    assert got == [{"n": 1}, {"n": 2}, {"n": 3}] and not failures
    channel.route(None)
    for i in range(HELD_MESSAGES + 1):
        channel.feed(f'{{"i":{i}}}')
    assert channel.closed and [f.parameters["limit"] for f in failures] == ["held_channel"]


async def test_a_responder_routes_by_label_opens_the_control_channel_and_answers_ready() -> None:
    rig = Rig(initiator=False, ports=["todos", "notes"])
    await rig.open("p2pdb/1/notes")
    assert rig.link.multiplexed
    assert [c.label for c, _ in rig.engine.opened_channels] == ["p2pdb/1"]
    assert rig.ports["notes"].open == [rig.link.primary] and rig.ports["todos"].open == []
    raw, events = rig.remote_channel("p2pdb/1/todos")  # the initiator's second channel
    assert events is not None and raw.sent == ['{"p2pdb":"ready"}']
    assert len(rig.ports["todos"].open) == 1
    events.frame('{"id":"1","method":"token","params":[]}')
    assert rig.ports["todos"].messages == [{"id": "1", "method": "token", "params": []}]
    # a control channel, or a second one, from the initiator is refused
    assert rig.remote_channel("p2pdb/1")[1] is None and rig.codes() == ["WEBRTC_CHANNEL_REFUSED"]
    # channels for collections not here are held, at most MAX_HELD
    for i in range(MAX_HELD):
        assert rig.remote_channel(f"p2pdb/1/other{i}")[1] is not None
    assert rig.remote_channel("p2pdb/1/one-too-many")[1] is None
    assert rig.codes().count("WEBRTC_CHANNEL_REFUSED") == 2 and not rig.link.ended
    rig.link.end()


async def test_an_initiator_opens_what_both_list_and_waits_for_ready() -> None:
    rig = Rig(initiator=True, ports=["todos", "notes"])
    await rig.open()  # labelled p2pdb/1/todos; two pools: held until the proof
    assert rig.link.label == "p2pdb/1/todos" and rig.ports["todos"].open == []
    control_raw, control = rig.remote_channel("p2pdb/1")
    assert control is not None and rig.ports["todos"].open == [rig.link.primary]
    await asyncio.sleep(0)  # our list goes out (a task)
    assert control_raw.sent == [b'{"collections":["todos","notes"]}']  # a plain frame: binary
    control.frame('{"collections":["notes","todos"]}')
    (opened,) = [c for c, _ in rig.engine.opened_channels]
    assert opened.label == "p2pdb/1/notes"
    notes_events = rig.engine.opened_channels[0][1]
    notes_events.opened()
    assert rig.ports["notes"].open == []  # until the responder said it is ready
    notes_events.frame('{"p2pdb":"ready"}')
    assert len(rig.ports["notes"].open) == 1
    # the responder stops replicating notes: we close that channel, quietly
    control.frame('{"collections":["todos"]}')
    assert opened.readyState == "closed" and len(rig.ports["notes"].closed) == 1
    assert rig.errors == [] and not rig.link.ended
    # a malformed list ends the link
    control.frame('{"collections":"all"}')
    assert rig.codes() == ["WEBRTC_PROTOCOL_VIOLATION"] and rig.link.ended


async def test_a_peer_that_does_not_prove_it_is_p2pdb_is_refused_with_several_pools() -> None:
    rig = Rig(initiator=True, ports=["todos", "notes"], proof_timeout=0.1)
    await rig.open()
    await asyncio.wait_for(rig.link.wait_closed(), 5)  # no control channel came
    assert rig.codes() == ["WEBRTC_COLLECTIONS_AMBIGUOUS"]
    assert rig.ports["todos"].open == [] and rig.ports["notes"].open == []

    rxdb = Rig(initiator=False, ports=["todos", "notes"])
    await rxdb.open("a" * 40)  # an RxDB initiator's random label
    assert rxdb.codes() == ["WEBRTC_COLLECTIONS_AMBIGUOUS"] and rxdb.link.ended

    alone = Rig(initiator=False, ports=["todos"])
    await alone.open("a" * 40)  # one pool: the RxDB peer replicates it, as before
    assert alone.ports["todos"].open == [alone.link.primary] and not alone.link.multiplexed
    assert alone.remote_channel("b" * 40)[1] is None  # its second channel: refused
    assert alone.errors == []
    alone.link.end()


def test_ready_is_a_plain_object() -> None:
    assert READY == {"p2pdb": "ready"}
