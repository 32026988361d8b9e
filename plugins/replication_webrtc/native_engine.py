"""Choosing the WebRTC engine, and loading the native one only when it is chosen.

Two engines sit behind the connection handler: ``"aiortc"`` (the default and the reference,
pure Python) and ``"native"`` (libdatachannel through the ``aiolibdatachannel`` wheel, Python
3.12 and later, installed with ``pip install 'p2pdb[native]'``). :func:`resolve_engine` picks
one: the ``engine=`` argument, else the ``P2PDB_WEBRTC_ENGINE`` environment variable (so a
whole test suite or deployment can switch without code changes), else ``"aiortc"``.

Nothing here imports ``aiolibdatachannel`` at module level: :func:`load_native` does, the
first time the native engine is chosen, and turns every way it can be missing into one
typed error (``WEBRTC_ENGINE_UNAVAILABLE``) that says how to install it.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Literal

from p2pdb.errors import ReplicationError, ValidationError

__all__ = [
    "ENGINES",
    "ENGINE_ENVIRONMENT_VARIABLE",
    "NATIVE_LOG_ENVIRONMENT_VARIABLE",
    "EngineName",
    "host_has_network",
    "load_native",
    "native_ice_urls",
    "resolve_engine",
]

EngineName = Literal["aiortc", "native"]
#: The engines a connection handler can use.
ENGINES: tuple[EngineName, ...] = ("aiortc", "native")
#: The environment variable that sets the engine when ``engine=`` is not given.
ENGINE_ENVIRONMENT_VARIABLE = "P2PDB_WEBRTC_ENGINE"
#: Set to a libdatachannel log level (``error``, ``warning``, ``info``, ``debug``,
#: ``verbose``) to route libdatachannel's own log into the ``p2pdb.webrtc.libdatachannel``
#: logger (a diagnostic switch: ICE checks, DTLS and SCTP as libdatachannel sees them).
NATIVE_LOG_ENVIRONMENT_VARIABLE = "P2PDB_NATIVE_RTC_LOG"
_NATIVE_LOGGER = "p2pdb.webrtc.libdatachannel"

#: What p2pdb calls on ``aiolibdatachannel._core`` (checked once, so a changed wheel fails
#: with a clear message instead of an AttributeError in the middle of a connection).
_CORE_NAMES = ("PeerConnection", "DataChannel", "ERR_SUCCESS")
_PC_METHODS = (
    "set_on_state_change",
    "set_on_gathering_state_change",
    "set_on_ice_state_change",
    "set_on_data_channel",
    "set_local_description",
    "set_remote_description",
    "add_remote_candidate",
    "get_local_description",
    "get_remote_description",
    "create_data_channel",
    "close",
    "destroy",
)
_DC_METHODS = (
    "set_on_open",
    "set_on_closed",
    "set_on_error",
    "set_on_message",
    "set_on_buffered_amount_low",
    "send_text",
    "send_bytes",
    "buffered_amount",
    "set_buffered_amount_low_threshold",
    "is_open",
    "is_closed",
    "close",
    "destroy",
)
_INSTALL_HINT = "pip install 'p2pdb[native]' (needs Python >= 3.12)"


def resolve_engine(engine: str | None) -> EngineName:
    """The engine to use: ``engine``, else ``$P2PDB_WEBRTC_ENGINE``, else ``"aiortc"``.

    Raises :class:`ValidationError` (``WEBRTC_SETTING_INVALID``) for an unknown name.
    """
    source = "engine"
    if engine is None:
        engine = os.environ.get(ENGINE_ENVIRONMENT_VARIABLE, "").strip() or "aiortc"
        source = ENGINE_ENVIRONMENT_VARIABLE
    if engine not in ENGINES:
        raise ValidationError(
            f"{source} must be one of {', '.join(ENGINES)}, got {engine!r}",
            code="WEBRTC_SETTING_INVALID",
            setting="engine",
        )
    return engine


def load_native() -> ModuleType:
    """Import and check ``aiolibdatachannel._core`` (the thin layer over libdatachannel's C
    API that the native engine drives); raise ``WEBRTC_ENGINE_UNAVAILABLE`` if it cannot.

    The wheel's asyncio layer is not used: its data channel keeps received messages in a
    1024-message queue that silently drops the oldest when full, which a reliable, ordered
    replication channel must never do.
    """
    if sys.version_info < (3, 12):
        raise _unavailable(
            f"The native WebRTC engine needs Python >= 3.12 (this is "
            f"{sys.version_info.major}.{sys.version_info.minor}): on 3.12+, {_INSTALL_HINT}; "
            "here, use engine='aiortc'."
        )
    try:
        core = importlib.import_module("aiolibdatachannel._core")
    except ImportError as error:
        raise _unavailable(
            f"The native WebRTC engine needs aiolibdatachannel: {_INSTALL_HINT}. ({error})"
        ) from error
    missing = [name for name in _CORE_NAMES if not hasattr(core, name)]
    missing += [f"PeerConnection.{m}" for m in _PC_METHODS if not hasattr(core.PeerConnection, m)]
    missing += [f"DataChannel.{m}" for m in _DC_METHODS if not hasattr(core.DataChannel, m)]
    if missing:
        raise _unavailable(
            "This aiolibdatachannel lacks what the native engine uses "
            f"({', '.join(missing)}); {_INSTALL_HINT} installs a tested version."
        )
    _install_native_log()
    return core


def _install_native_log() -> None:
    """Route libdatachannel's log to Python logging if ``$P2PDB_NATIVE_RTC_LOG`` asks (once)."""
    global _native_log_installed
    wanted = os.environ.get(NATIVE_LOG_ENVIRONMENT_VARIABLE, "").strip().upper()
    if not wanted or _native_log_installed:
        return
    wheel = importlib.import_module("aiolibdatachannel")  # load_native() imported it
    levels = wheel.LogLevel
    if wanted not in levels.__members__:
        raise ValidationError(
            f"{NATIVE_LOG_ENVIRONMENT_VARIABLE} must be one of "
            f"{', '.join(name.lower() for name in levels.__members__)}, got {wanted.lower()!r}",
            code="WEBRTC_SETTING_INVALID",
            setting=NATIVE_LOG_ENVIRONMENT_VARIABLE,
        )
    wheel.install_python_logger(_NATIVE_LOGGER, level=levels[wanted])
    _native_log_installed = True


_native_log_installed = False


def native_ice_urls(servers: Sequence[object]) -> tuple[str, ...]:
    """libdatachannel's ICE server strings for aiortc-style servers (``urls``,
    ``username``, ``credential``): credentials go inside the URL, URL-encoded
    (``turn:user:pass@host:port?transport=udp``), as libdatachannel parses them."""
    from urllib.parse import quote

    result: list[str] = []
    for server in servers:
        urls = getattr(server, "urls", ())
        username = getattr(server, "username", None)
        credential = getattr(server, "credential", None)
        for url in [urls] if isinstance(urls, str) else list(urls):
            scheme, _, rest = str(url).partition(":")
            if scheme in ("turn", "turns") and (username or credential):
                user = quote(username or "", safe="")
                secret = quote(credential or "", safe="")
                result.append(f"{scheme}:{user}:{secret}@{rest}")
            else:
                result.append(str(url))
    return tuple(result)


def host_has_network() -> bool:
    """Whether this host has an address other than loopback (as aioice lists them)."""
    import aioice.ice

    return bool(aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=True))


def _unavailable(message: str) -> ReplicationError:
    return ReplicationError(message, code="WEBRTC_ENGINE_UNAVAILABLE", engine="native")
