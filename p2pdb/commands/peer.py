"""``p2pdb peer``: keep one collection of a database file in sync with a WebRTC topic."""

from __future__ import annotations

import argparse

from ..errors import ValidationError
from .base import (
    Command,
    add_password_options,
    check_database_folder,
    read_json_file,
    read_password,
    stop_event,
)

__all__ = ["COMMAND"]


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def _configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db", required=True, metavar="FILE", help="SQLite file (created if missing)"
    )
    parser.add_argument(
        "--collection", required=True, metavar="NAME", help="collection to replicate"
    )
    parser.add_argument(
        "--schema",
        required=True,
        metavar="FILE",
        help="JSON file holding the collection's schema (RxDB form)",
    )
    parser.add_argument(
        "--topic", required=True, help="topic (room) to join: every peer in it replicates"
    )
    parser.add_argument(
        "--signaling", required=True, metavar="URL", help="signaling server, ws://host:port"
    )
    parser.add_argument(
        "--host-address",
        action="append",
        metavar="IP",
        help="gather ICE host candidates only on this address (repeatable; 127.0.0.1 for "
        "peers on one machine)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=_positive,
        default=15.0,
        metavar="SECONDS",
        help="for joining the topic and for each connection attempt (default: %(default)s)",
    )
    parser.add_argument(
        "--status-interval",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="when stdout is not a terminal, write the status line at most this often "
        "(default: %(default)s)",
    )
    add_password_options(parser)


async def _run(args: argparse.Namespace) -> int:
    schema = read_json_file(args.schema, "schema file")
    if not isinstance(schema, dict):
        raise ValidationError(
            f"The schema file {args.schema!r} must hold a JSON object (an RxDB schema).",
            code="SCHEMA_NOT_OBJECT",
        )
    check_database_folder(args.db)
    password = read_password(args)
    from p2pdb.plugins.replication_webrtc.node import PeerSettings, run_peer

    settings = PeerSettings(
        db_path=args.db,
        collection=args.collection,
        schema=schema,
        topic=args.topic,
        signaling_url=args.signaling,
        host_addresses=args.host_address,
        password=password,
        connect_timeout=args.connect_timeout,
        status_interval=args.status_interval,
    )
    return await run_peer(settings, stop_event())


COMMAND = Command(
    name="peer",
    help="keep a collection of a database file in sync with a topic",
    description=(
        "Replicate one collection of a database file with every peer of a topic (p2pdb or "
        "RxDB), until Ctrl-C or SIGTERM. A status line shows peers, documents, documents "
        "sent and received, and the last error."
    ),
    configure=_configure,
    run=_run,
)
