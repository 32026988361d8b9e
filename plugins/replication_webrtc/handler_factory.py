"""``aiortc_connection_handler``: check the connection settings once, then make a started
:class:`~.connection.ConnectionHandler` per topic."""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from p2pdb.errors import ValidationError

from .aiortc_engine import AiortcEngine
from .connection import ConnectionHandler
from .engine import EngineFactory, LinkSettings
from .ice import ice_servers_have_turn, to_rtc_ice_servers, validate_host_addresses
from .mesh import DEFAULT_MAX_LINKS, check_max_links
from .native_engine import load_native, resolve_engine
from .native_link import NativeEngine
from .signal_crypto import TopicSecret
from .signaling_client import SignalingAccess, signaling_urls

__all__ = ["ConnectionHandlerFactory", "ConnectionOptions", "aiortc_connection_handler"]

ConnectionHandlerFactory: TypeAlias = Callable[[str], Awaitable[ConnectionHandler]]
"""``await factory(topic)`` returns a started :class:`ConnectionHandler` in that room."""


@dataclass(frozen=True)
class ConnectionOptions:
    """How the handlers of a factory connect: the keywords of
    :func:`aiortc_connection_handler` as one typed, reusable object
    (``aiortc_connection_handler(url, options=ConnectionOptions(relay_only=True, ...))``).
    Each field means what the keyword of the same name does; they are checked when the
    factory is made."""

    ice_servers: Sequence[Mapping[str, Any]] | None = None
    host_addresses: Sequence[str] | None = None
    relay_only: bool = False
    connect_timeout: float = 15.0
    secret: str | bytes | TopicSecret | None = None
    ssl: ssl_module.SSLContext | None = None
    headers: Mapping[str, str] | None = None
    compression: bool = True
    delayed_sack: bool = True
    engine: str | None = None
    max_links: int = DEFAULT_MAX_LINKS


def aiortc_connection_handler(
    signaling_url: str | Sequence[str],
    ice_servers: list[dict[str, Any]] | None = None,
    host_addresses: list[str] | None = None,
    relay_only: bool = False,
    connect_timeout: float = 15.0,
    *,
    secret: str | bytes | TopicSecret | None = None,
    ssl: ssl_module.SSLContext | None = None,
    headers: Mapping[str, str] | None = None,
    compression: bool = True,
    delayed_sack: bool = True,
    engine: str | None = None,
    max_links: int = DEFAULT_MAX_LINKS,
    options: ConnectionOptions | None = None,
) -> ConnectionHandlerFactory:
    """Make a factory of aiortc connection handlers for one signaling server, or several.

    The settings come as keywords, or all together as ``options``
    (:class:`ConnectionOptions`); giving both raises :class:`ValidationError`
    ``WEBRTC_SETTING_INVALID``.

    ``signaling_url``: ``"ws://host:port"``, or a list of URLs of signaling nodes that share
    rooms (``p2pdb signaling --redis``): the handler uses one at a time and moves to the next
    whenever its connection fails or closes (after a backoff delay), so its peers are reached
    again through another node when one dies.

    ``ice_servers``: dicts ``{"urls", "username"?, "credential"?}`` (default: none,
    so aiortc never asks a public STUN server; aiortc uses the first STUN and the
    first TURN server only). ``relay_only``: use only TURN relay candidates.
    ``host_addresses``: gather host candidates only on these IPs (e.g.
    ``["127.0.0.1"]``, which aioice leaves out otherwise); by default every address
    of the host but loopback, or ``127.0.0.1`` when the host has no other (so peers
    on a machine with only a loopback interface still connect). ``connect_timeout``:
    for joining the topic and for each connection attempt.

    ``secret``: a topic secret shared by the peers (p2pdb peers only; RxDB peers cannot
    join a secret topic). The server then sees only a keyed hash of the topic, and every
    signal (SDP, candidates) is encrypted and authenticated; a peer without the secret
    never meets the others. A ``str``/``bytes`` secret must be random and at least 16
    characters; wrap a typed password as ``TopicSecret(password, kdf="scrypt")``.
    ``ssl``: an :class:`ssl.SSLContext` for a ``wss://`` server
    (e.g. one trusting a private CA). ``headers``: extra HTTP headers of the WebSocket
    opening request, e.g. ``{"Authorization": "Bearer <token>"}`` for a server with an
    ``authenticate`` hook.

    ``compression``: offer and accept zlib-compressed frames; used with a p2pdb peer whose
    handler accepts them too, once the handshake (``authenticate=True`` on both pools)
    showed it; RxDB peers always get plain frames. ``delayed_sack``: acknowledge every
    second SCTP packet instead of each (RFC 4960 6.2; wire-compatible; a patch of aiortc
    applied only to the versions it was checked against; ``P2PDB_SCTP_DELAYED_SACK=0``
    switches it off for the process). Both save CPU; see docs/webrtc.md.
    ``engine``: ``"aiortc"`` (the default) or ``"native"`` (libdatachannel, ``pip install
    'p2pdb[native]'`` on Python >= 3.12; see docs/webrtc.md); ``None`` reads the
    ``P2PDB_WEBRTC_ENGINE`` environment variable, else uses aiortc. Choosing ``"native"``
    without it installed raises :class:`ReplicationError` ``WEBRTC_ENGINE_UNAVAILABLE``.

    ``max_links``: beyond this many links per peer a topic keeps a partial mesh (see
    docs/webrtc.md); a pool's ``max_links`` option overrides it once the pool starts.

    ``await factory(topic)`` returns a started handler joined to ``topic``, or
    raises :class:`ReplicationError` ``WEBRTC_SIGNALING_UNREACHABLE``. Settings
    are checked here and raise :class:`ValidationError`.
    """
    keywords = ConnectionOptions(
        ice_servers=ice_servers, host_addresses=host_addresses, relay_only=relay_only,
        connect_timeout=connect_timeout, secret=secret, ssl=ssl, headers=headers,
        compression=compression, delayed_sack=delayed_sack, engine=engine, max_links=max_links,
    )  # fmt: skip
    if options is None:
        options = keywords
    elif keywords != ConnectionOptions():
        raise ValidationError(
            "aiortc_connection_handler takes its settings as keywords or as options=, not both",
            code="WEBRTC_SETTING_INVALID",
        )
    return _factory(signaling_url, options)


def _factory(
    signaling_url: str | Sequence[str], options: ConnectionOptions
) -> ConnectionHandlerFactory:
    """Check ``options`` once; the factory shares the checked settings among its handlers."""
    servers = to_rtc_ice_servers(
        None if options.ice_servers is None else [dict(s) for s in options.ice_servers]
    )
    hosts = validate_host_addresses(
        None if options.host_addresses is None else list(options.host_addresses)
    )
    relay_only, connect_timeout = options.relay_only, options.connect_timeout
    if relay_only and not ice_servers_have_turn(servers):
        raise ValidationError(
            "relay_only=True needs a TURN server in ice_servers",
            code="WEBRTC_ICE_SERVER_INVALID",
        )
    if connect_timeout <= 0:
        raise ValidationError(
            f"connect_timeout must be positive, got {connect_timeout}",
            code="WEBRTC_SETTING_INVALID",
        )

    links = check_max_links(options.max_links)
    engine: EngineFactory = AiortcEngine
    if resolve_engine(options.engine) == "native":
        load_native()  # WEBRTC_ENGINE_UNAVAILABLE now, not at the first connection
        engine = NativeEngine
    urls = signaling_urls(signaling_url)
    access = SignalingAccess(secret=options.secret, ssl=options.ssl, headers=options.headers)
    settings = LinkSettings(
        ice_servers=tuple(servers),
        relay_only=relay_only,
        host_addresses=hosts,
        connect_timeout=connect_timeout,
        compression=options.compression,
        delayed_sack=options.delayed_sack,
    )

    async def factory(topic: str) -> ConnectionHandler:
        handler = ConnectionHandler(
            topic, urls, settings, signaling=access, engine=engine, max_links=links
        )
        await handler.start(join_timeout=connect_timeout)
        return handler

    return factory
