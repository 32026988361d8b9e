"""ReplicationOptions: one typed object for replicate()'s options, and its keyword mirror."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, get_type_hints

import pytest
from replication_helpers import contents, wait_equal
from schemas import TODO_SCHEMA

import p2pdb
from p2pdb.errors import ReplicationError, ValidationError
from p2pdb.replication import (
    ReplicationOptions,
    ReplicationState,
    collection_handler,
    replicate,
)
from p2pdb.replication.options import ReplicationOptionsChanges

ROOT = Path(__file__).resolve().parents[1]
Factory = Callable[[str], Any]


@pytest.fixture
async def make_collection(tmp_path: Path) -> AsyncIterator[Factory]:
    """Opens a fresh database file per call and returns its todos collection."""
    dbs: list[p2pdb.Database] = []

    async def make(name: str) -> Any:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"))
        dbs.append(db)
        return await db.add_collection("todos", schema=TODO_SCHEMA)

    yield make
    for db in dbs:
        await db.close()


def test_keyword_mirror_matches_the_dataclass() -> None:
    # replicate(**changes) is typed by the TypedDict: it must list exactly the fields
    fields = {f.name: f.type for f in dataclasses.fields(ReplicationOptions)}
    assert get_type_hints(ReplicationOptionsChanges) == get_type_hints(ReplicationOptions)
    assert list(ReplicationOptionsChanges.__annotations__) == list(fields)
    assert ReplicationOptionsChanges.__required_keys__ == frozenset()


def test_defaults_and_frozen() -> None:
    options = ReplicationOptions()
    assert dataclasses.asdict(options) == {
        "pull": True,
        "push": True,
        "live": True,
        "batch_size": 100,
        "retry_delay": 0.5,
        "max_retry_delay": 15.0,
        "selector": None,
        "pull_modifier": None,
        "push_modifier": None,
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.batch_size = 5  # type: ignore[misc]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10"])
def test_bad_batch_size(bad: Any) -> None:
    with pytest.raises(ValidationError) as info:
        ReplicationOptions(batch_size=bad)
    assert info.value.code == "REPLICATION_BAD_BATCH_SIZE"


@pytest.mark.parametrize(
    ("delay", "cap"), [(0, 1), (-1, 1), (2.0, 1.0), ("1", 5), (None, 5), (1, True)]
)
async def test_bad_retry_delays(make_collection: Factory, delay: Any, cap: Any) -> None:
    fork, master = await make_collection("fork"), await make_collection("master")
    with pytest.raises(ValidationError) as info:
        replicate(fork, collection_handler(master), "r", retry_delay=delay, max_retry_delay=cap)
    assert info.value.code == "REPLICATION_BAD_RETRY_DELAY"
    assert info.value.parameters["retry_delay"] == delay


async def test_validation_codes_and_order(make_collection: Factory) -> None:
    fork, master = await make_collection("fork"), await make_collection("master")
    handler = collection_handler(master)
    with pytest.raises(ValidationError) as info:
        replicate(fork, handler, "", batch_size=0)  # the id is checked first, as before
    assert info.value.code == "REPLICATION_ID"
    with pytest.raises(ValidationError) as info:
        replicate(fork, handler, "r", batch_size=0)
    assert info.value.code == "REPLICATION_BAD_BATCH_SIZE"


async def test_object_keywords_and_both(make_collection: Factory) -> None:
    fork, master = await make_collection("fork"), await make_collection("master")
    handler = collection_handler(master)
    by_object = ReplicationState(fork, handler, "a", ReplicationOptions(live=False, batch_size=7))
    by_keywords = ReplicationState(fork, handler, "b", live=False, batch_size=7)
    assert by_object.options == by_keywords.options == ReplicationOptions(live=False, batch_size=7)
    both = replicate(
        fork, handler, "c", ReplicationOptions(batch_size=7, push=False), batch_size=9,
        autostart=False,
    )  # fmt: skip
    assert both.options == ReplicationOptions(push=False, batch_size=9)  # keywords win
    assert (both.pull, both.push, both.live, both.batch_size) == (True, False, True, 9)
    assert replicate(fork, handler, "d", autostart=False).options == ReplicationOptions()


async def test_constructor_starts_nothing(make_collection: Factory) -> None:
    fork, master = await make_collection("fork"), await make_collection("master")
    await master.insert({"id": "m1", "text": "from master"})
    before = asyncio.all_tasks()
    state = ReplicationState(fork, collection_handler(master), "r", live=False)
    assert asyncio.all_tasks() == before
    assert state.paused and not state.is_in_sync()
    state.start_nowait()  # the public synchronous start replicate() uses
    assert not state.paused and len(asyncio.all_tasks()) == len(before) + 2
    async with state:
        async with asyncio.timeout(10):
            await state.wait_for_initial_replication()
        assert await contents(fork) == {"m1": {"id": "m1", "text": "from master"}}
    with pytest.raises(ReplicationError) as info:
        state.start_nowait()
    assert info.value.code == "REPLICATION_CANCELED"


async def test_options_object_replicates(make_collection: Factory) -> None:
    fork, master = await make_collection("fork"), await make_collection("master")
    await master.bulk_insert([{"id": f"m{i}", "text": str(i)} for i in range(25)])
    await fork.insert({"id": "f1", "text": "from fork"})
    options = ReplicationOptions(batch_size=3, retry_delay=0.01, max_retry_delay=0.05)
    state = replicate(fork, collection_handler(master), "main", options, autostart=False)
    assert state.paused
    async with state:
        await state.start()
        await wait_equal(fork, master)
    assert len(await contents(master)) == 26


@pytest.mark.skipif(shutil.which("mypy") is None, reason="mypy is not installed")
def test_calls_type_check(tmp_path: Path) -> None:
    """The documented calls pass mypy --strict; a misspelt or mistyped option does not."""
    script = tmp_path / "calls.py"
    script.write_text(
        textwrap.dedent(
            """
            from p2pdb import Collection
            from p2pdb.replication import ReplicationOptions, collection_handler, replicate

            async def main(todos: Collection, fork: Collection) -> None:
                handler = collection_handler(todos)
                replicate(todos, handler, "main")
                replicate(todos, handler, "main", retry_delay=0.5, max_retry_delay=15.0)
                replicate(fork, handler, "x", live=False, push=False, batch_size=1000,
                          autostart=False)
                replicate(fork, handler, "y", ReplicationOptions(pull=False), autostart=False)
                replicate(fork, handler, "z", batch_sise=10)  # bad
                replicate(fork, handler, "z", live="no")  # bad
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "MYPYPATH": str(ROOT)},
    )  # fmt: skip
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    bad = [n for n, line in enumerate(script.read_text().splitlines(), 1) if "# bad" in line]
    assert len(bad) == 2 and lines == bad, result.stdout
