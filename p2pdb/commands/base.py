"""What every command shares: the :class:`Command` record, checks of user input that end in
one typed error (never a traceback), the password options, stopping on a signal.

Every user mistake is raised as a :class:`~p2pdb.errors.P2PDBError` with a stable code;
``p2pdb/cli.py`` prints it as one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import NotFoundError, ValidationError

__all__ = [
    "Command",
    "add_password_options",
    "check_database_folder",
    "existing_database",
    "open_file",
    "port_number",
    "read_json_file",
    "read_password",
    "stop_event",
]

#: What a command's ``run`` returns: a coroutine giving the exit status.
Runner = Callable[[argparse.Namespace], Coroutine[Any, Any, int]]


@dataclass(frozen=True)
class Command:
    """One ``p2pdb`` command.

    ``help`` is the one-line summary in ``p2pdb --help`` (``None`` hides the command: the
    internal ``demo-peer``); ``configure`` adds the command's options to its parser; ``run``
    does the work and returns the exit status.
    """

    name: str
    help: str | None
    description: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Runner


def port_number(text: str) -> int:
    """An ``argparse`` type: a TCP port, 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


def read_json_file(path: str, what: str) -> Any:
    """The JSON value in the file ``path`` (``what`` names it in errors)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFoundError(
            f"The {what} {path!r} does not exist.", code="CLI_FILE_NOT_FOUND", path=path
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(
            f"Cannot read the {what} {path!r}: {exc}.", code="CLI_FILE_UNREADABLE", path=path
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"The {what} {path!r} is not valid JSON: {exc}.", code="CLI_FILE_NOT_JSON", path=path
        ) from None


def check_database_folder(path: str) -> None:
    """A database to be created: its folder must exist (SQLite would only say "unable to
    open database file")."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise NotFoundError(
            f"The folder {str(folder)!r} of the database {path!r} does not exist; create it first.",
            code="CLI_FOLDER_NOT_FOUND",
            path=path,
        )


def existing_database(path: str) -> None:
    """A database to read: it must exist and be a p2pdb file (opening a missing file would
    create an empty one, and opening another SQLite file would add p2pdb's tables to it)."""
    if not Path(path).is_file():
        raise NotFoundError(
            f"The database {path!r} does not exist.", code="CLI_FILE_NOT_FOUND", path=path
        )
    try:
        with contextlib.closing(
            sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        ) as conn:
            found = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE name IN "
                "('p2pdb_info', 'p2pdb_collections')"
            ).fetchone()[0]
    except sqlite3.Error as exc:
        raise ValidationError(
            f"{path!r} is not a p2pdb database: {exc}.", code="CLI_NOT_A_DATABASE", path=path
        ) from None
    if found != 2:
        raise ValidationError(
            f"{path!r} is an SQLite file but not a p2pdb database.",
            code="CLI_NOT_A_DATABASE",
            path=path,
        )


def open_file(path: str, mode: str) -> IO[Any]:
    """Open a file given on the command line (``"r"``/``"rb"`` to read, ``"w"`` to write);
    a failure is a typed error. Commands read and write synchronously: they are the only
    task of their process."""
    try:
        return open(path, mode, encoding=None if "b" in mode else "utf-8")  # noqa: SIM115
    except OSError as exc:
        reading = "r" in mode
        raise ValidationError(
            f"Cannot {'read' if reading else 'write'} {path!r}: {exc.strerror or exc}.",
            code="CLI_FILE_UNREADABLE" if reading else "CLI_CANNOT_WRITE",
            path=path,
        ) from None


# -- passwords -------------------------------------------------------------------------------


def add_password_options(parser: argparse.ArgumentParser) -> None:
    """``--password``, ``--password-env`` and ``--password-stdin`` (one at most)."""
    group = parser.add_argument_group(
        "password (for a database with encrypted fields; give at most one)"
    )
    choice = group.add_mutually_exclusive_group()
    choice.add_argument(
        "--password",
        metavar="TEXT",
        help="the password itself (visible to other users in `ps`: prefer the next two)",
    )
    choice.add_argument(
        "--password-env",
        metavar="NAME",
        help="read the password from the environment variable NAME",
    )
    choice.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (a prompt on a terminal)",
    )


def read_password(args: argparse.Namespace) -> str | None:
    """The password the options give, or ``None``."""
    if args.password is not None:
        return str(args.password)
    if args.password_env is not None:
        value = os.environ.get(args.password_env)
        if value is None:
            raise ValidationError(
                f"--password-env names {args.password_env!r}, but no such environment "
                "variable is set.",
                code="CLI_USAGE",
            )
        return value
    if args.password_stdin:
        if sys.stdin.isatty():
            return getpass.getpass("password: ")
        return sys.stdin.readline().rstrip("\r\n")
    return None


# -- running -------------------------------------------------------------------------------


def stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (where the loop supports signal handlers)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return stop
