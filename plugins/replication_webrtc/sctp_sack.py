"""Delayed SACKs for aiortc's SCTP (RFC 4960 section 6.2), as a small contained patch.

**What changes.** aiortc (checked: :data:`CHECKED_AIORTC_VERSIONS`) answers every received
SCTP packet that carries DATA with its own SACK packet: one more DTLS-encrypted UDP
datagram per packet, both ways, which is a large share of its CPU on a bulk transfer. RFC 4960
section 6.2 asks for less:

    ... an acknowledgement SHOULD be generated for at least every second packet (not every
    second DATA chunk) received, and SHOULD be generated within 200 ms of the arrival of any
    unacknowledged DATA chunk. ... when a packet arrives with duplicate DATA chunk(s) ... the
    endpoint MUST immediately send a SACK.

and section 6.7 asks for an immediate SACK while the received TSNs have gaps. With this
patch, a transport it is enabled for (:func:`enable`) sends its SACK:

- at once when the packet left duplicates or gaps, or filled the last gap (loss recovery
  and fast retransmit are as quick as before);
- at once on every second packet that needed one, while packets come close together (a
  sender filling its window waits for it);
- after :data:`QUIET_DELAY` (1 ms) for the second packet of a quiet spell, when the packet
  before it came at least :data:`QUIET` (2 ms) earlier: no window is filling, and the
  SACK's encryption and ``sendto`` (60-190 us on a busy peer) no longer come between the
  message's arrival and the application's handling of it, a live change's latency;
- otherwise after :data:`DELAY` seconds (200 ms, the RFC's bound), unless the next packet
  came first.

Only *when* a SACK goes out changes, never its content, so the wire stays compatible with
any peer (aiortc with or without the patch, usrsctp in browsers and node-datachannel).

**How.** aiortc calls ``RTCSctpTransport._send_sack()`` from one place: at the end of
handling a received packet that needs a SACK. :func:`enable` replaces that one method on the
class (once, and only for a checked aiortc version; on another version nothing is patched and
this is logged once at debug) with :func:`delayed_send_sack`, which decides per transport:
transports :func:`enable` was not called for keep aiortc's behaviour exactly.

**Switching it off.** ``aiortc_connection_handler(..., delayed_sack=False)``, or the
environment variable ``P2PDB_SCTP_DELAYED_SACK=0`` for the whole process.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiortc.rtcsctptransport import RTCSctpTransport

from . import aiortc_patches

__all__ = [
    "CHECKED_AIORTC_VERSIONS",
    "DELAY",
    "ENV_VARIABLE",
    "QUIET",
    "QUIET_DELAY",
    "SackCounts",
    "counts",
    "delayed_send_sack",
    "enable",
    "enabled_by_environment",
    "supported",
]

logger = logging.getLogger("p2pdb.webrtc.sctp_sack")

#: aiortc versions whose ``RTCSctpTransport`` was read and tested with this patch.
CHECKED_AIORTC_VERSIONS = frozenset({"1.16.0"})
#: The most a SACK waits for a second packet (RFC 4960 6.2: at most 200 ms).
DELAY = 0.2
#: Packets acknowledged by one SACK at most (RFC 4960 6.2: at least every second packet).
EVERY = 2
#: A packet this long (seconds) after the one before it ends a quiet spell: its SACK is sent
#: :data:`QUIET_DELAY` later, after the application's turn, unless another packet comes first.
QUIET = 0.002
QUIET_DELAY = 0.001
#: ``P2PDB_SCTP_DELAYED_SACK=0`` switches the patch off for the process.
ENV_VARIABLE = "P2PDB_SCTP_DELAYED_SACK"


@dataclass
class SackCounts:
    """What the patched method saw in this process (for tests and benchmarks)."""

    packets: int = 0
    """Received packets that needed a SACK, on transports the patch is enabled for."""
    sent: int = 0
    """SACK chunks those transports sent (at once or from the timer)."""
    delayed: int = 0
    """SACKs sent by the timer (no second packet within :data:`DELAY`, or the second packet
    of a quiet spell, :data:`QUIET_DELAY` later)."""
    for_gaps: int = 0
    """SACKs sent at once because of gaps or duplicates (loss or reordering)."""
    quiet: int = 0
    """Second packets after a quiet spell, whose SACK waited :data:`QUIET_DELAY` (a third
    packet meanwhile is acknowledged with them, at once)."""


class _State:
    __slots__ = ("gaps", "last", "task", "timer", "unacked")

    def __init__(self) -> None:
        self.unacked = 0  # packets received since the last SACK
        self.gaps = False  # the last SACK reported gaps or duplicates
        self.last = float("-inf")  # loop time of the last packet that needed a SACK
        self.timer: asyncio.TimerHandle | None = None
        self.task: asyncio.Task[None] | None = None  # a timer's SACK being sent


_counts = SackCounts()
_states: weakref.WeakKeyDictionary[RTCSctpTransport, _State] = weakref.WeakKeyDictionary()
_original: Callable[[RTCSctpTransport], Awaitable[None]] | None = None


def counts() -> SackCounts:
    """The process-wide counters of the patched method."""
    return _counts


_METHODS = ("_send_sack",)


def supported() -> bool:
    """Whether the installed aiortc is one this patch was checked against."""
    return aiortc_patches.checked(CHECKED_AIORTC_VERSIONS, *_METHODS)


def enabled_by_environment() -> bool:
    """``False`` when ``P2PDB_SCTP_DELAYED_SACK`` is ``0``/``false``/``no``/``off``."""
    return aiortc_patches.switched_on(ENV_VARIABLE)


def enable(transport: RTCSctpTransport) -> bool:
    """Use delayed SACKs on ``transport`` (a data channel's ``channel.transport``).

    Returns whether they are on: ``False`` if the environment switched them off or the
    installed aiortc is not a checked version (then nothing is patched)."""
    global _original
    if not aiortc_patches.may_patch(
        ENV_VARIABLE, CHECKED_AIORTC_VERSIONS, _METHODS, "delayed SACKs", logger
    ):
        return False
    if _original is None:
        _original = RTCSctpTransport._send_sack
        RTCSctpTransport._send_sack = delayed_send_sack  # type: ignore[method-assign]
    if transport not in _states:
        _states[transport] = _State()
    return True


async def delayed_send_sack(self: RTCSctpTransport) -> None:
    """``RTCSctpTransport._send_sack`` with RFC 4960 6.2's delay (see the module docstring).

    aiortc awaits it once per received packet that needs a SACK."""
    assert _original is not None
    state = _states.get(self)
    if state is None:  # not enabled for this transport: aiortc's behaviour
        await _original(self)
        return
    _counts.packets += 1
    state.unacked += 1
    loop = asyncio.get_running_loop()
    now = loop.time()
    quiet = now - state.last >= QUIET
    state.last = now
    gaps = bool(self._sack_misordered or self._sack_duplicates)
    if gaps or state.gaps:
        _counts.for_gaps += 1
        await _send_now(self, state, gaps)
    elif state.unacked >= EVERY and not quiet:
        await _send_now(self, state, gaps)
    elif state.unacked >= EVERY:  # after a quiet spell: once the application had its turn
        _counts.quiet += 1
        if state.timer is not None:
            state.timer.cancel()
        state.timer = loop.call_later(QUIET_DELAY, _expired, self, state)
    elif state.timer is None:
        state.timer = loop.call_later(DELAY, _expired, self, state)


async def _send_now(self: RTCSctpTransport, state: _State, gaps: bool) -> None:
    assert _original is not None
    if state.timer is not None:
        state.timer.cancel()
        state.timer = None
    state.unacked = 0
    state.gaps = gaps
    _counts.sent += 1
    await _original(self)


def _expired(self: RTCSctpTransport, state: _State) -> None:
    state.timer = None
    if not self._sack_needed or self._association_state == RTCSctpTransport.State.CLOSED:
        state.unacked = 0
        return
    _counts.delayed += 1
    state.task = asyncio.ensure_future(_send_from_timer(self, state))


async def _send_from_timer(self: RTCSctpTransport, state: _State) -> None:
    try:
        if self._sack_needed:  # a packet may have brought one at once meanwhile
            await _send_now(self, state, bool(self._sack_misordered or self._sack_duplicates))
    except Exception:  # the DTLS transport closed under us: nothing left to acknowledge
        logger.debug("a delayed SACK could not be sent", exc_info=True)
    finally:
        state.task = None
