"""``p2pdb signaling``: run a signaling server (RxDB 17.6's simple-peer protocol)."""

from __future__ import annotations

import argparse
import errno

from ..errors import ValidationError
from .base import Command, port_number, stop_event

__all__ = ["COMMAND", "listen_error"]


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


async def _run(args: argparse.Namespace) -> int:
    from p2pdb.plugins.replication_webrtc import start_signaling_server

    stop = stop_event()
    try:
        server = await start_signaling_server(host=args.host, port=args.port)
    except OSError as exc:
        raise listen_error(args.host, args.port, exc) from None
    print(f"p2pdb signaling server listening on {server.url} (Ctrl-C to stop)", flush=True)
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
