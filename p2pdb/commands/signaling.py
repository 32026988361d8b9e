"""``p2pdb signaling``: run a signaling server (RxDB 17.6's simple-peer protocol)."""

from __future__ import annotations

import argparse
import errno
import os
import ssl
from typing import Any

from ..errors import NotFoundError, ValidationError
from .base import Command, port_number, stop_event

__all__ = ["COMMAND", "listen_error", "tls_context"]


def listen_error(host: str, port: int, error: OSError) -> ValidationError:
    """The typed error of a server that cannot listen on ``host:port``."""
    if error.errno == errno.EADDRINUSE:
        reason = f"port {port} is already in use on {host}; pick another with --port"
    elif error.errno == errno.EACCES:
        reason = f"no permission to listen on port {port} (ports below 1024 need root)"
    else:
        reason = f"{error.strerror or error}; check --host"
    return ValidationError(
        f"Cannot listen on {host}:{port}: {reason}.",
        code="CLI_CANNOT_LISTEN",
        host=host,
        port=port,
    )


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """The server's TLS context from ``--tls-cert`` and ``--tls-key`` (both or neither)."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise ValidationError(
            "--tls-cert and --tls-key go together: give both (PEM files).", code="CLI_USAGE"
        )
    for path in (cert, key):
        if not os.path.isfile(path):
            raise NotFoundError(
                f"The TLS file {path!r} does not exist.", code="CLI_FILE_NOT_FOUND", path=path
            )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise ValidationError(
            f"Cannot use --tls-cert {cert!r} with --tls-key {key!r}: {reason}. "
            "Both must be PEM files, the key matching the certificate.",
            code="CLI_TLS_INVALID",
            cert=cert,
            key=key,
        ) from None
    return context


def _positive(kind: type[int] | type[float]) -> Any:
    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = 0
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
        return value

    return parse


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s; 0.0.0.0 for every interface)",
    )
    parser.add_argument(
        "--port",
        type=port_number,
        default=8080,
        help="TCP port (default: %(default)s; 0 picks a free one)",
    )
    parser.add_argument("--tls-cert", metavar="FILE", help="serve wss://: certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="the certificate's private key (PEM)")
    parser.add_argument(
        "--auth-token-env",
        metavar="NAME",
        help="admit only clients sending the token in the environment variable NAME "
        "(as 'Authorization: Bearer TOKEN' or '?token=TOKEN' in the URL)",
    )
    parser.add_argument(
        "--redis",
        metavar="URL",
        help="share rooms with every other node on this Redis (redis://host:port/db, "
        "rediss:// for TLS): run several behind a load balancer (docs/deployment.md)",
    )
    parser.add_argument(
        "--redis-heartbeat",
        type=_positive(float),
        default=2.0,
        metavar="SECONDS",
        help="with --redis: heartbeat interval; the members of a node silent for 3 "
        "intervals leave their rooms (default: %(default)s)",
    )
    limits = parser.add_argument_group("limits (defaults in docs/webrtc.md)")
    limits.add_argument(
        "--max-connections", type=_positive(int), metavar="N", help="open sockets (10000)"
    )
    limits.add_argument(
        "--max-peers-per-room", type=_positive(int), metavar="N", help="members of a room (256)"
    )
    limits.add_argument(
        "--max-messages-per-second",
        type=_positive(float),
        metavar="N",
        help="frames per second per socket (50, bursts of 500)",
    )
    limits.add_argument(
        "--idle-timeout",
        type=_positive(float),
        metavar="SECONDS",
        help="close a socket silent this long (120)",
    )


def _authenticate(env_name: str | None) -> Any:
    if env_name is None:
        return None
    token = os.environ.get(env_name)
    if not token:
        raise ValidationError(
            f"--auth-token-env names {env_name!r}, but no such environment variable is set "
            "(or it is empty).",
            code="CLI_USAGE",
        )
    from p2pdb.plugins.replication_webrtc.signaling_limits import bearer_token

    return bearer_token(token)


async def _run(args: argparse.Namespace) -> int:
    from p2pdb.plugins.replication_webrtc import start_signaling_server
    from p2pdb.plugins.replication_webrtc.signaling_limits import SignalingServerOptions

    context = tls_context(args.tls_cert, args.tls_key)
    authenticate = _authenticate(args.auth_token_env)
    given = {
        "max_connections": args.max_connections,
        "max_peers_per_room": args.max_peers_per_room,
        "max_messages_per_second": args.max_messages_per_second,
        "ping_timeout": args.idle_timeout,
    }
    options = SignalingServerOptions(**{k: v for k, v in given.items() if v is not None})
    rooms = None
    if args.redis is not None:
        from p2pdb.plugins.replication_webrtc.signaling_redis import RedisOptions, RedisRooms

        beat = args.redis_heartbeat
        rooms = RedisRooms(RedisOptions(args.redis, beat, heartbeat_timeout=3 * beat))
    stop = stop_event()
    try:
        server = await start_signaling_server(
            host=args.host,
            port=args.port,
            options=options,
            ssl=context,
            authenticate=authenticate,
            rooms=rooms,
        )
    except OSError as exc:
        raise listen_error(args.host, args.port, exc) from None
    shared = ", rooms shared through Redis" if args.redis else ""
    print(f"p2pdb signaling server listening on {server.url}{shared} (Ctrl-C to stop)", flush=True)
    try:
        await stop.wait()
    finally:
        await server.close()
    return 0


COMMAND = Command(
    name="signaling",
    help="run a signaling server that introduces peers to each other",
    description=(
        "Run a WebRTC signaling server (RxDB 17.6's protocol). Peers use it only to find "
        "each other; documents travel directly between peers."
    ),
    configure=_configure,
    run=_run,
)
