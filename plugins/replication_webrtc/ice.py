"""ICE configuration helpers: ICE server dicts, and a scoped host-address override.

aioice gathers host candidates from ``aioice.ice.get_host_addresses()``, which
leaves out loopback addresses, so two peers on 127.0.0.1 (tests, or a machine
without a network) would find no candidates. :func:`host_addresses_override`
fixes the list of addresses for the code running inside it.

How it stays safe with several handlers in one process: the module attribute
is replaced once, by a wrapper that reads a :class:`contextvars.ContextVar`.
When the variable is unset (everyone else, by default) the wrapper calls the
original function, so behaviour is unchanged. Each connection sets the variable
in its own task, and asyncio copies the context into the tasks aiortc spawns
while gathering (``asyncio.gather``), so each connection sees only its own
addresses, however many handlers with different settings run concurrently.
A context variable was chosen over patching around each gathering because a
patch/unpatch pair would race between concurrent gatherings.

With no override (``host_addresses=None``, the default) a connection still gets
aioice's own list, except when that list is empty: a host whose only interface is
loopback (a container or namespace with only ``lo`` up, a laptop offline) then
offers ``127.0.0.1``, so two peers on that host connect instead of timing out.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import aioice.ice
from aiortc import RTCIceServer
from aiortc.rtcicetransport import parse_stun_turn_uri

from p2pdb.errors import ValidationError

__all__ = [
    "LOOPBACK_FALLBACK",
    "host_addresses_override",
    "ice_servers_have_turn",
    "to_rtc_ice_servers",
    "validate_host_addresses",
]

#: The addresses used when aioice finds none but loopback (it leaves loopback out).
LOOPBACK_FALLBACK = ("127.0.0.1",)
#: The context variable's value inside a connection without an override: aioice's
#: list, or LOOPBACK_FALLBACK when that list is empty.
_AUTOMATIC = ("automatic",)

_HOST_ADDRESSES: ContextVar[tuple[str, ...] | None] = ContextVar(
    "p2pdb_webrtc_host_addresses", default=None
)
_original_get_host_addresses: Callable[[bool, bool], list[str]] | None = None


def _get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    override = _HOST_ADDRESSES.get()
    if override is None or override is _AUTOMATIC:
        assert _original_get_host_addresses is not None
        found = _original_get_host_addresses(use_ipv4, use_ipv6)
        if found or override is None:
            return found
        override = LOOPBACK_FALLBACK
    return [address for address in override if (use_ipv6 if ":" in address else use_ipv4)]


def _install() -> None:
    global _original_get_host_addresses
    if aioice.ice.get_host_addresses is not _get_host_addresses:
        _original_get_host_addresses = aioice.ice.get_host_addresses
        aioice.ice.get_host_addresses = _get_host_addresses


def validate_host_addresses(addresses: Sequence[str] | None) -> tuple[str, ...] | None:
    """Check a ``host_addresses`` setting; raise ``WEBRTC_HOST_ADDRESS_INVALID``."""
    if addresses is None:
        return None
    if isinstance(addresses, str):
        raise ValidationError(
            "host_addresses must be a list of IP addresses, not a string",
            code="WEBRTC_HOST_ADDRESS_INVALID",
        )
    result = []
    for address in addresses:
        try:
            result.append(str(ipaddress.ip_address(address)))
        except ValueError as error:
            raise ValidationError(
                f"host_addresses holds {address!r}, which is not an IP address",
                code="WEBRTC_HOST_ADDRESS_INVALID",
                address=address,
            ) from error
    return tuple(result)


@contextlib.contextmanager
def host_addresses_override(addresses: Sequence[str] | None) -> Iterator[None]:
    """Gather host candidates only on ``addresses`` inside this block.

    ``None`` keeps aioice's own lookup, falling back to ``127.0.0.1`` when it finds
    no address but loopback. Set it in the task that calls ``setLocalDescription``;
    tasks started from there inherit it.
    """
    _install()
    token = _HOST_ADDRESSES.set(_AUTOMATIC if addresses is None else tuple(addresses))
    try:
        yield
    finally:
        _HOST_ADDRESSES.reset(token)


def to_rtc_ice_servers(servers: Sequence[Mapping[str, Any]] | None) -> list[RTCIceServer]:
    """Turn ``{"urls", "username"?, "credential"?}`` dicts into aiortc servers.

    Raises :class:`ValidationError` (``WEBRTC_ICE_SERVER_INVALID``) for a malformed
    entry. aiortc uses only the first STUN and the first TURN server it is given.
    """
    result: list[RTCIceServer] = []
    for index, server in enumerate(servers or []):
        if not isinstance(server, Mapping):
            raise _server_error(index, "must be a dict with `urls`")
        unknown = set(server) - {"urls", "username", "credential", "credentialType"}
        if unknown:
            raise _server_error(index, f"has unknown keys {sorted(unknown)}")
        urls = server.get("urls")
        url_list = [urls] if isinstance(urls, str) else urls
        if not isinstance(url_list, list) or not url_list:
            raise _server_error(index, "needs `urls`: a URL string or a list of them")
        for url in url_list:
            if not isinstance(url, str):
                raise _server_error(index, f"has a URL that is not a string: {url!r}")
            try:
                parse_stun_turn_uri(url)
            except ValueError as error:
                raise _server_error(index, f"has a malformed URL {url!r}: {error}") from error
        username, credential = server.get("username"), server.get("credential")
        for name, value in (("username", username), ("credential", credential)):
            if value is not None and not isinstance(value, str):
                raise _server_error(index, f"`{name}` must be a string")
        result.append(
            RTCIceServer(
                urls=list(url_list),
                username=username,
                credential=credential,
                credentialType=server.get("credentialType", "password"),
            )
        )
    return result


def ice_servers_have_turn(servers: Sequence[RTCIceServer]) -> bool:
    """True if any server has a ``turn:`` or ``turns:`` URL."""
    for server in servers:
        urls = [server.urls] if isinstance(server.urls, str) else server.urls
        if any(url.startswith(("turn:", "turns:")) for url in urls):
            return True
    return False


def _server_error(index: int, problem: str) -> ValidationError:
    return ValidationError(
        f"ice_servers[{index}] {problem}", code="WEBRTC_ICE_SERVER_INVALID", index=index
    )
