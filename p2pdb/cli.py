"""The ``p2pdb`` command line (also ``python -m p2pdb``).

The commands live in :mod:`p2pdb.commands`, one module each; this module builds the parser,
sets up logging, runs the chosen command, and turns a user mistake (any
:class:`~p2pdb.errors.P2PDBError`, or a bad argument) into one line on stderr and exit status
2, never a traceback. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from . import __version__
from .commands import COMMAND_MODULES
from .commands.base import Command
from .errors import P2PDBError
from .loop import run

__all__ = ["USAGE_EXIT", "build_parser", "load_commands", "main"]

#: The exit status of a user mistake (bad option, missing file, port in use, ...).
USAGE_EXIT = 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line with a code, like every other mistake."""

    def error(self, message: str) -> NoReturn:
        _fail(f"[CLI_USAGE] {message} (see {self.prog} --help)")


def _fail(line: str) -> NoReturn:
    print(f"p2pdb: error: {line}", file=sys.stderr, flush=True)
    raise SystemExit(USAGE_EXIT)


def load_commands() -> list[Command]:
    """Every command, in the order of ``p2pdb --help``."""
    return [importlib.import_module(f"p2pdb.commands.{name}").COMMAND for name in COMMAND_MODULES]


def build_parser(commands: list[Command]) -> argparse.ArgumentParser:
    """The parser of the ``p2pdb`` command with ``commands``."""
    parser = _Parser(
        prog="p2pdb",
        description="p2pdb: a local-first document database with peer-to-peer sync.",
        epilog="Run 'p2pdb COMMAND --help' for a command's options. Docs: docs/cli.md.",
    )
    parser.add_argument("--version", action="version", version=f"p2pdb {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="log p2pdb's debug details to stderr (other libraries log warnings only)",
    )
    visible = [c.name for c in commands if c.help is not None]
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{" + ",".join(visible) + "}", parser_class=_Parser
    )
    for command in commands:
        extra: dict[str, Any] = {} if command.help is None else {"help": command.help}
        child = sub.add_parser(command.name, description=command.description, **extra)
        command.configure(child)
    return parser


def _configure_logging(verbose: bool) -> None:
    """Quiet by default (the status line shows the last error); ``-v`` turns on debug for
    p2pdb's own loggers only, never aiortc's SDP dumps or aiosqlite's per-call lines."""
    logging.basicConfig(
        level=logging.WARNING if verbose else logging.ERROR,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("p2pdb").setLevel(logging.DEBUG if verbose else logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``p2pdb`` command; returns the exit status."""
    commands = load_commands()
    args = build_parser(commands).parse_args(argv)
    _configure_logging(args.verbose)
    command = next(c for c in commands if c.name == args.command)
    try:
        return run(command.run(args))  # on uvloop when it is installed (p2pdb/loop.py)
    except P2PDBError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
