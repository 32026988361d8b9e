"""User mistakes on the ``p2pdb`` command line end in one line on stderr, ``p2pdb: error:
[CODE] message``, and exit status 2: never a traceback. Run as a user runs it
(``python -m p2pdb``), with real files and sockets."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_helpers import run
from schemas import PEER_SCHEMA

import p2pdb


def assert_one_line_error(result: subprocess.CompletedProcess[str], code: str) -> str:
    """Exit status 2, nothing but one ``p2pdb: error: [CODE] ...`` line on stderr."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"p2pdb: error: [{code}] "), lines[0]
    assert "Traceback" not in result.stderr and "uvloop" not in result.stderr
    return lines[0]


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(PEER_SCHEMA))
    return path


@pytest.fixture
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def peer_args(tmp_path: Path, schema: Path | str, signaling: str, db: str = "peer.db") -> list[str]:
    return [
        "peer",
        "--db",
        str(tmp_path / db) if "/" not in db else db,
        "--collection",
        "docs",
        "--schema",
        str(schema),
        "--topic",
        "errors-room",
        "--signaling",
        signaling,
        "--connect-timeout",
        "2",
    ]


# -- the command line itself ---------------------------------------------------------------


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"p2pdb {p2pdb.__version__}"


def test_help_lists_commands_and_hides_demo_peer() -> None:
    result = run("--help")
    assert result.returncode == 0
    for command in ("signaling", "peer", "demo", "inspect", "export", "import"):
        assert command in result.stdout
    assert "demo-peer" not in result.stdout
    assert run("demo-peer", "--help").returncode == 0  # still there for `p2pdb demo`


def test_every_option_has_a_help_text() -> None:
    import argparse

    from p2pdb import cli

    parser = cli.build_parser(cli.load_commands())
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, child in sub.choices.items():
        for action in child._actions:
            if action.option_strings and "-h" not in action.option_strings:
                assert action.help, f"{name} {action.option_strings} has no help"


def test_unknown_command_and_bad_option() -> None:
    assert_one_line_error(run("frobnicate"), "CLI_USAGE")
    assert_one_line_error(run("peer", "--db"), "CLI_USAGE")


# -- the mistakes the issue lists -----------------------------------------------------------


def test_port_out_of_range() -> None:
    line = assert_one_line_error(run("signaling", "--port", "99999"), "CLI_USAGE")
    assert "99999" in line


def test_port_in_use(busy_port: int) -> None:
    line = assert_one_line_error(run("signaling", "--port", str(busy_port)), "CLI_CANNOT_LISTEN")
    assert "already in use" in line


def test_missing_schema_file(tmp_path: Path, free_port: int) -> None:
    result = run(*peer_args(tmp_path, tmp_path / "nope.json", f"ws://127.0.0.1:{free_port}"))
    assert "nope.json" in assert_one_line_error(result, "CLI_FILE_NOT_FOUND")


def test_schema_file_not_json(tmp_path: Path, free_port: int) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    result = run(*peer_args(tmp_path, bad, f"ws://127.0.0.1:{free_port}"))
    assert_one_line_error(result, "CLI_FILE_NOT_JSON")


def test_invalid_schema(tmp_path: Path, free_port: int) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**PEER_SCHEMA, "primaryKey": "nope"}))
    result = run(*peer_args(tmp_path, bad, f"ws://127.0.0.1:{free_port}"))
    assert_one_line_error(result, "SCHEMA_PRIMARY_KEY")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    result = run(*peer_args(tmp_path, listed, f"ws://127.0.0.1:{free_port}"))
    assert_one_line_error(result, "SCHEMA_NOT_OBJECT")


def test_missing_folder(tmp_path: Path, schema_file: Path, free_port: int) -> None:
    db = str(tmp_path / "no" / "such" / "folder" / "x.db")
    result = run(*peer_args(tmp_path, schema_file, f"ws://127.0.0.1:{free_port}", db=db))
    assert_one_line_error(result, "CLI_FOLDER_NOT_FOUND")


def test_http_signaling_url(tmp_path: Path, schema_file: Path, free_port: int) -> None:
    result = run(*peer_args(tmp_path, schema_file, f"http://127.0.0.1:{free_port}"))
    assert_one_line_error(result, "WEBRTC_SIGNALING_URL_INVALID")


def test_unreachable_signaling_server(tmp_path: Path, schema_file: Path, free_port: int) -> None:
    result = run(*peer_args(tmp_path, schema_file, f"ws://127.0.0.1:{free_port}"))
    line = assert_one_line_error(result, "WEBRTC_SIGNALING_UNREACHABLE")
    assert f"ws://127.0.0.1:{free_port}" in line


def test_password_env_not_set(tmp_path: Path, schema_file: Path, free_port: int) -> None:
    args = peer_args(tmp_path, schema_file, f"ws://127.0.0.1:{free_port}")
    result = run(*args, "--password-env", "P2PDB_TEST_NO_SUCH_VARIABLE")
    assert_one_line_error(result, "CLI_USAGE")


def test_inspect_missing_or_foreign_file(tmp_path: Path) -> None:
    assert_one_line_error(run("inspect", str(tmp_path / "none.db")), "CLI_FILE_NOT_FOUND")
    assert not (tmp_path / "none.db").exists()  # not created by looking at it
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert_one_line_error(run("inspect", str(text)), "CLI_NOT_A_DATABASE")
    import sqlite3

    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    assert_one_line_error(run("export", str(other)), "CLI_NOT_A_DATABASE")
    with sqlite3.connect(other) as conn:  # nothing was added to it
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
    assert names == ["t"]


def test_export_unknown_collection_and_unwritable_output(tmp_path: Path) -> None:
    db = tmp_path / "a.db"
    assert run("import", str(db), stdin="").returncode == 0  # an empty database
    assert_one_line_error(run("export", str(db), "--collection", "nope"), "CLI_NO_SUCH_COLLECTION")
    out = str(tmp_path / "missing" / "out.jsonl")
    assert_one_line_error(run("export", str(db), "-o", out), "CLI_CANNOT_WRITE")


def test_password_stdin_with_data_on_stdin(tmp_path: Path) -> None:
    result = run("import", str(tmp_path / "a.db"), "--password-stdin", stdin="secret\n")
    assert_one_line_error(result, "CLI_USAGE")
