"""libdatachannel's threads, bridged onto the event loop: one peer connection and its channels.

libdatachannel runs ICE, DTLS and SCTP in its own threads and calls back from them (through
``aiolibdatachannel._core``, with the GIL held). Every callback here does only thread-safe
work and hands the rest to the loop with ``call_soon_threadsafe``:

- **Received messages** go into a per-channel backlog under a lock, and one drain is
  scheduled per burst (not one loop wake-up per message). The backlog is bounded: a peer
  that makes it hold more than ``receive_limit`` characters before the loop reads them is
  cut off (``on_overflow``), never silently truncated.
- **Blocking calls** (applying a remote description, adding a candidate, which may resolve
  a host name, and destroying handles, which waits for running callbacks) run in a worker
  thread, never on the loop.

:class:`NativeChannel` offers what :class:`~.framing.ChannelWriter` needs (``bufferedAmount``,
``bufferedAmountLowThreshold``, ``readyState``, ``send``), so sending has the same flow
control on both engines.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = [
    "ChannelEvents",
    "NativeChannel",
    "NativeConfig",
    "NativePeerConnection",
    "free_udp_port",
]

logger = logging.getLogger("p2pdb.webrtc.native")

#: libdatachannel's rtcState values.
_STATES = ("new", "connecting", "connected", "disconnected", "failed", "closed")
#: libdatachannel's rtcIceState values.
_ICE_STATES = ("new", "checking", "connected", "completed", "failed", "disconnected", "closed")
_GATHERING_COMPLETE = 2
_TRANSPORT_POLICY_RELAY = 1


def _schedule(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while libdatachannel drains
        loop.call_soon_threadsafe(fn, *args)


@dataclass(frozen=True)
class NativeConfig:
    """What one native peer connection is made with."""

    ice_urls: tuple[str, ...] = ()
    relay_only: bool = False
    receive_limit: int = 64 * 1024 * 1024
    """Most characters received and not yet read by the loop, per channel."""
    port: int = 0
    """The UDP port libdatachannel binds (0: any)."""


def free_udp_port() -> int:
    """A UDP port free on this host right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass(frozen=True)
class ChannelEvents:
    """A channel's callbacks, all called on the event loop."""

    opened: Callable[[], None]
    message: Callable[[str | bytes], None]
    closed: Callable[[], None]
    low: Callable[[], None]
    overflow: Callable[[int], None]


class NativeChannel:
    """One libdatachannel data channel; see the module docstring."""

    def __init__(self, core: ModuleType, handle: int, loop: asyncio.AbstractEventLoop) -> None:
        self._native = core.DataChannel(handle)
        self._loop = loop
        self._lock = threading.Lock()
        self._backlog: list[str | bytes] = []
        self._backlog_size = 0
        self._drain_scheduled = False
        self._dead = False
        self._receive_limit = 0
        self._events: ChannelEvents | None = None
        self._low_threshold = 0
        self._closed = False
        self._destroyed = False

    # -- the SendChannel protocol of framing.ChannelWriter ---------------------------------

    @property
    def bufferedAmount(self) -> int:  # noqa: N802 - the name ChannelWriter reads
        """Bytes queued in libdatachannel and not yet sent."""
        return 0 if self._destroyed else int(self._native.buffered_amount())

    @property
    def bufferedAmountLowThreshold(self) -> int:  # noqa: N802 - as above
        """``low`` fires when the queue drains to this many bytes."""
        return self._low_threshold

    @bufferedAmountLowThreshold.setter
    def bufferedAmountLowThreshold(self, value: int) -> None:  # noqa: N802 - as above
        self._low_threshold = value
        if not self._destroyed:
            self._native.set_buffered_amount_low_threshold(value)

    @property
    def readyState(self) -> str:  # noqa: N802 - as above
        """``"open"``, ``"connecting"`` or ``"closed"``."""
        if self._closed or self._destroyed or self._native.is_closed():
            return "closed"
        return "open" if self._native.is_open() else "connecting"

    @property
    def label(self) -> str:
        """The channel's label (``""`` once released)."""
        if self._destroyed:
            return ""
        return str(self._native.label() or "")

    def send(self, data: bytes | str) -> None:
        """Queue one message (raises ``RuntimeError`` subclasses if the channel is gone)."""
        if self._destroyed:
            raise RuntimeError("the channel was destroyed")
        if isinstance(data, str):
            self._native.send_text(data)
        else:
            self._native.send_bytes(bytes(data))

    # -- receiving ----------------------------------------------------------------------

    @property
    def receive_overflowed(self) -> bool:
        """Whether the receive backlog went over its limit (the channel then delivers no
        more messages; ``overflow`` was or will be called). Safe from any thread."""
        with self._lock:
            return self._dead and not self._closed

    def capture(self, receive_limit: int) -> None:
        """Keep its messages from now on, before :meth:`listen` (safe from any thread: the
        peer connection calls it in libdatachannel's thread as the remote's channel arrives,
        since aiolibdatachannel drops what arrives on a channel before its message callback
        is set)."""
        self._receive_limit = receive_limit
        # an open callback first: libdatachannel hands over the messages that came before
        # the message callback only once an open callback exists (else: at the next one)
        self._native.set_on_open(lambda: _schedule(self._loop, self._deliver_open))
        self._native.set_on_message(self._on_message_thread)

    def listen(self, events: ChannelEvents, receive_limit: int) -> None:
        """Start delivering this channel's events (once); messages kept before come first."""
        self._events = events
        self._receive_limit = receive_limit
        native = self._native
        native.set_on_open(lambda: _schedule(self._loop, self._deliver_open))
        native.set_on_closed(lambda: _schedule(self._loop, self._deliver_closed))
        native.set_on_error(lambda text: _schedule(self._loop, self._deliver_error, text))
        native.set_on_buffered_amount_low(lambda: _schedule(self._loop, events.low))
        native.set_on_message(self._on_message_thread)
        if native.is_open():  # a responder's channel may be open already
            _schedule(self._loop, self._deliver_open)
        _schedule(self._loop, self._drain)  # what capture() kept

    def _on_message_thread(self, data: str | bytes) -> None:
        """In a libdatachannel thread: keep the message, wake the loop once per burst."""
        with self._lock:
            if self._dead:
                return
            self._backlog.append(data)
            self._backlog_size += len(data)
            if self._backlog_size > self._receive_limit:
                self._dead = True
                size, self._backlog, self._backlog_size = self._backlog_size, [], 0
                _schedule(self._loop, self._deliver_overflow, size)
                return
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        _schedule(self._loop, self._drain)

    def _drain(self) -> None:
        if self._events is None and not self._closed:
            with self._lock:
                self._drain_scheduled = False  # kept for listen()
            return
        with self._lock:
            batch, self._backlog, self._backlog_size = self._backlog, [], 0
            self._drain_scheduled = False
        events = self._events
        if events is None:
            return
        for data in batch:
            events.message(data)

    def _deliver_open(self) -> None:
        if self._events is not None and not self._closed:
            self._events.opened()

    def _deliver_closed(self) -> None:
        self._drain()  # what arrived before the close comes first
        if self._events is not None:
            self._events.closed()

    def _deliver_error(self, text: str) -> None:
        logger.info("data channel error: %s", text)

    def _deliver_overflow(self, size: int) -> None:
        if self._events is not None:
            self._events.overflow(size)

    # -- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop delivering events and start closing the channel (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            self._dead = True
            self._backlog, self._backlog_size = [], 0
        self._events = None
        if not self._destroyed:
            with contextlib.suppress(Exception):
                self._native.close()

    def destroy(self) -> None:
        """Release the native handle (blocks until running callbacks end: call it in a
        worker thread)."""
        self._destroyed = True
        with contextlib.suppress(Exception):
            self._native.destroy()


class NativePeerConnection:
    """One libdatachannel peer connection; made and used on the event loop."""

    def __init__(
        self,
        core: ModuleType,
        config: NativeConfig,
        *,
        on_state: Callable[[str], None],
        on_channel: Callable[[NativeChannel], None],
        on_ice_state: Callable[[str], None] | None = None,
    ) -> None:
        self._core = core
        self._loop = asyncio.get_running_loop()
        self._on_state = on_state
        self._on_channel = on_channel
        self._on_ice_state = on_ice_state
        self._gathered = asyncio.Event()
        self._channels: list[NativeChannel] = []
        self._closed = False
        self._native = core.PeerConnection(
            list(config.ice_urls),
            disable_auto_negotiation=True,
            ice_transport_policy=_TRANSPORT_POLICY_RELAY if config.relay_only else 0,
            port_range_begin=config.port,
            port_range_end=config.port,
        )
        loop = self._loop
        self._native.set_on_state_change(lambda state: _schedule(loop, self._state, state))
        self._native.set_on_gathering_state_change(
            lambda state: _schedule(loop, self._gathering, state)
        )
        self._receive_limit = config.receive_limit
        self._native.set_on_data_channel(self._channel_thread)
        if on_ice_state is not None:
            self._native.set_on_ice_state_change(
                lambda state: _schedule(loop, self._ice_state, state)
            )

    @property
    def local_description(self) -> str | None:
        """Our SDP as libdatachannel holds it now (``None`` before it is set)."""
        return None if self._closed else self._native.get_local_description()

    @property
    def remote_description(self) -> str | None:
        """The remote SDP applied (``None`` before it is set)."""
        return None if self._closed else self._native.get_remote_description()

    def create_channel(self, label: str) -> NativeChannel:
        """An ordered, reliable data channel (negotiated in-band, as RxDB's)."""
        handle = self._native.create_data_channel(label)
        channel = NativeChannel(self._core, handle, self._loop)
        self._channels.append(channel)
        return channel

    async def describe(self, kind: str) -> str:
        """Set our ``offer`` or ``answer`` and return its SDP once gathering has finished,
        every candidate inside (as aiortc does, and simple-peer expects)."""
        self._gathered.clear()
        self._native.set_local_description(kind)
        await self._gathered.wait()
        sdp = self._native.get_local_description()
        if sdp is None:
            raise RuntimeError("libdatachannel has no local description after gathering")
        return str(sdp)

    async def set_remote(self, sdp: str, kind: str) -> None:
        """Apply the remote ``offer`` or ``answer`` (in a worker thread)."""
        await asyncio.to_thread(self._native.set_remote_description, sdp, kind)

    async def add_candidate(self, candidate: str, mid: str | None) -> None:
        """Add one remote candidate (in a worker thread: libdatachannel may resolve a name)."""
        await asyncio.to_thread(self._native.add_remote_candidate, candidate, mid or "")

    async def close(self) -> None:
        """Close every channel and the connection, and release the handles (idempotent)."""
        if self._closed:
            return
        self._closed = True
        for channel in self._channels:
            channel.close()
        with contextlib.suppress(Exception):
            self._native.close()
        await asyncio.to_thread(self._destroy)

    def _destroy(self) -> None:
        for channel in self._channels:
            channel.destroy()
        with contextlib.suppress(Exception):
            self._native.destroy()

    def _state(self, state: int) -> None:
        if not self._closed and 0 <= state < len(_STATES):
            self._on_state(_STATES[state])

    def _ice_state(self, state: int) -> None:
        if not self._closed and self._on_ice_state is not None and 0 <= state < len(_ICE_STATES):
            self._on_ice_state(_ICE_STATES[state])

    def _gathering(self, state: int) -> None:
        if state == _GATHERING_COMPLETE:
            self._gathered.set()

    def _channel_thread(self, handle: int) -> None:
        """In libdatachannel's thread: the remote's channel, its messages kept at once."""
        channel = NativeChannel(self._core, handle, self._loop)
        channel.capture(self._receive_limit)
        _schedule(self._loop, self._incoming, channel)

    def _incoming(self, channel: NativeChannel) -> None:
        self._channels.append(channel)
        if self._closed:
            channel.close()
            return
        self._on_channel(channel)
