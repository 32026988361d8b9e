"""p2pdb/loop.py: the command line runs on uvloop when it is importable, on asyncio's own
loop when it is not or when ``P2PDB_UVLOOP=0``."""

from __future__ import annotations

import asyncio
import importlib.machinery
import importlib.util
import logging
import os
import subprocess
import sys
import types
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

import p2pdb
from p2pdb import cli, loop


class FakeUvloop(types.ModuleType):
    """Stands in for uvloop: records that it ran the program (on asyncio's loop)."""

    def __init__(self) -> None:
        super().__init__("uvloop")
        self.__spec__ = importlib.machinery.ModuleSpec("uvloop", None)
        self.ran: list[str] = []

    def run(self, main: Coroutine[Any, Any, Any]) -> Any:
        self.ran.append(getattr(main, "__qualname__", "?"))
        return asyncio.run(main)


async def make_file(path: Path) -> None:
    async with p2pdb.create_database(str(path)) as db:
        await db.add_collection(
            "docs",
            schema={
                "version": 0,
                "primaryKey": "id",
                "type": "object",
                "properties": {"id": {"type": "string", "maxLength": 9}},
            },
        )


@pytest.fixture(autouse=True)
def logging_restored() -> Iterator[None]:
    """``cli.main`` configures logging for the process (quiet p2pdb loggers): undo it, or
    later tests waiting for a warning would never see it."""
    root, ours = logging.getLogger(), logging.getLogger("p2pdb")
    saved = (root.level, list(root.handlers), ours.level)
    yield
    root.setLevel(saved[0])
    root.handlers[:] = saved[1]
    ours.setLevel(saved[2])


@pytest.fixture
def file(tmp_path: Path) -> Path:
    path = tmp_path / "one.db"
    asyncio.run(make_file(path))
    return path


def test_the_cli_runs_on_uvloop_when_importable(
    file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = FakeUvloop()
    monkeypatch.setitem(sys.modules, "uvloop", fake)
    monkeypatch.delenv(loop.ENV_VARIABLE, raising=False)
    assert loop.uvloop_wanted()
    assert cli.main(["inspect", str(file)]) == 0
    assert len(fake.ran) == 1 and "docs" in capsys.readouterr().out

    monkeypatch.setenv(loop.ENV_VARIABLE, "0")  # switched off: asyncio's loop
    assert not loop.uvloop_wanted()
    assert cli.main(["inspect", str(file)]) == 0
    assert len(fake.ran) == 1


def test_the_cli_falls_back_when_uvloop_is_missing(
    file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # an import of it fails
    monkeypatch.delenv(loop.ENV_VARIABLE, raising=False)
    assert not loop.uvloop_wanted()
    assert cli.main(["inspect", str(file)]) == 0
    assert "docs" in capsys.readouterr().out


def test_loop_name_and_run_return_the_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)

    async def main() -> str:
        return loop.loop_name()

    assert loop.run(main()) == "asyncio"


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None, reason="uvloop not installed")
def test_a_real_uvloop_runs_the_program() -> None:
    code = "from p2pdb import loop\nasync def m(): return loop.loop_name()\nprint(loop.run(m()))"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop(loop.ENV_VARIABLE, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "uvloop", out.stderr
