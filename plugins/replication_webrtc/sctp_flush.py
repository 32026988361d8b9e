"""Sending a data channel's message in the caller's turn, as a small contained patch of aiortc.

**What changes.** aiortc (checked: :data:`CHECKED_AIORTC_VERSIONS`) queues each message
``RTCDataChannel.send()`` is given and flushes that queue in a new task
(``asyncio.ensure_future(self._data_channel_flush())``). The frame leaves only on the loop's
next turn, behind every callback that is ready by then: 20-40 us of a single write's way
to a peer on a busy process, on both sides of every request and answer. With this patch a
transport it is enabled for (:func:`enable`) runs that same flush at once, with
:func:`p2pdb.eager.start_eagerly`: the frame is encrypted and handed to the socket before
``send()`` returns. If the flush has to wait (it never does on aiortc's own path today),
the rest runs as the task would have.

Only *when* the flush runs changes: the frames and SCTP's congestion control are aiortc's,
so the wire is unchanged for any peer. Messages sent in one turn are no longer flushed
together by one task, but aiortc sends one chunk per packet either way.

**Urgent frames first.** A frame sent with :data:`~p2pdb.replication.lanes.URGENT_SEND` set
(a heartbeat, a live stream event: :mod:`p2pdb.replication.lanes`) goes ahead of the frames
the transport still queues, behind earlier urgent ones. Without it, a live event waited for
every bulk frame aiortc had taken: its queue is bounded in bytes on the wire (the writer's
high water mark), and 128 KB of compressed frames can hold thousands of documents, which
the peer decodes before it reaches the live one (100 ms measured during a 10k sync). Our
framing reassembles interleaved frames, as it does for frames the writer interleaves. The
live event's checkpoint (the floor, lanes.py) stays sound: the channel's
:class:`~p2pdb.replication.lanes.FlushGauge` makes a message the floor only once its frames
left this queue, where nothing overtakes them any more.

**How.** :func:`enable` replaces ``RTCSctpTransport._data_channel_send`` on the class (once,
and only for a checked aiortc version; otherwise nothing is patched and this is logged once
at debug) with :func:`eager_data_channel_send`: aiortc's own method with its last line
changed. Transports :func:`enable` was not called for keep aiortc's behaviour exactly.

**Switching it off.** The environment variable ``P2PDB_SCTP_EAGER_FLUSH=0``.
"""

from __future__ import annotations

import logging
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any

from aiortc import rtcsctptransport
from aiortc.rtcsctptransport import RTCSctpTransport

from p2pdb.eager import start_eagerly
from p2pdb.replication.lanes import URGENT_SEND

from . import aiortc_patches

__all__ = [
    "CHECKED_AIORTC_VERSIONS",
    "ENV_VARIABLE",
    "eager_data_channel_send",
    "enable",
    "enabled_by_environment",
    "supported",
]

logger = logging.getLogger("p2pdb.webrtc.sctp_flush")

#: aiortc versions whose ``RTCSctpTransport._data_channel_send`` was read and tested.
CHECKED_AIORTC_VERSIONS = frozenset({"1.16.0"})
#: ``P2PDB_SCTP_EAGER_FLUSH=0`` switches the patch off for the process.
ENV_VARIABLE = "P2PDB_SCTP_EAGER_FLUSH"

# per enabled transport: its queued urgent entries, oldest first (always at the queue's head)
_urgent: weakref.WeakKeyDictionary[RTCSctpTransport, deque[Any]] = weakref.WeakKeyDictionary()
_original: Callable[[RTCSctpTransport, Any, bytes | str], None] | None = None
_METHODS = ("_data_channel_send", "_data_channel_flush")


def supported() -> bool:
    """Whether the installed aiortc is one this patch was checked against."""
    return aiortc_patches.checked(CHECKED_AIORTC_VERSIONS, *_METHODS)


def enabled_by_environment() -> bool:
    """``False`` when ``P2PDB_SCTP_EAGER_FLUSH`` is ``0``/``false``/``no``/``off``."""
    return aiortc_patches.switched_on(ENV_VARIABLE)


def enable(transport: RTCSctpTransport) -> bool:
    """Flush ``transport``'s data channels at once (``channel.transport`` of one of them).

    Returns whether it is on: ``False`` if the environment switched it off or the
    installed aiortc is not a checked version (then nothing is patched)."""
    global _original
    if not aiortc_patches.may_patch(
        ENV_VARIABLE, CHECKED_AIORTC_VERSIONS, _METHODS, "flushing at once", logger
    ):
        return False
    if _original is None:
        _original = RTCSctpTransport._data_channel_send
        RTCSctpTransport._data_channel_send = eager_data_channel_send  # type: ignore[method-assign]
    _urgent.setdefault(transport, deque())
    return True


def eager_data_channel_send(self: RTCSctpTransport, channel: Any, data: bytes | str) -> None:
    """aiortc 1.16's ``RTCSctpTransport._data_channel_send``, whose flush starts at once and
    which queues an urgent frame ahead of the others (see the module docstring)."""
    urgent = _urgent.get(self)
    if urgent is None:
        assert _original is not None
        _original(self, channel, data)
        return
    if data == "":
        pp_id, user_data = rtcsctptransport.WEBRTC_STRING_EMPTY, b"\x00"
    elif isinstance(data, str):
        pp_id, user_data = rtcsctptransport.WEBRTC_STRING, data.encode("utf8")
    elif data == b"":
        pp_id, user_data = rtcsctptransport.WEBRTC_BINARY_EMPTY, b"\x00"
    else:
        pp_id, user_data = rtcsctptransport.WEBRTC_BINARY, data
    limit = self._remote_max_message_size  # 0: the remote takes messages of any size
    if limit and len(user_data) > limit:
        raise ValueError(
            f"Cannot send message of {len(user_data)} bytes, the remote party "
            f"only supports messages up to {limit} bytes"
        )
    channel._addBufferedAmount(len(user_data))
    entry = (channel, pp_id, user_data)
    queue: deque[Any] = self._data_channel_queue
    if URGENT_SEND.get() and queue:
        while urgent and (not queue or queue[0] is not urgent[0]):
            urgent.popleft()  # flushed (the flush takes entries from the head)
        queue.insert(len(urgent), entry)
        urgent.append(entry)
    else:
        queue.append(entry)
    start_eagerly(self._data_channel_flush())  # aiortc: asyncio.ensure_future(...)
