"""The value of an encrypted field never appears in an error or a log record.

A sentinel plaintext is written where it breaks a rule (an insert, a patch, a replicated
document from a peer, both directions) and must not appear in the error's message,
``repr``, ``parameters`` or ``to_json()`` (nor in its causes), nor in any log record at
DEBUG of the ``p2pdb`` loggers; a wrong password must not appear either.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import p2pdb
from p2pdb.errors import ConflictError, EncryptionError, P2PDBError, ValidationError
from p2pdb.replication import collection_handler, replicate
from p2pdb.replication.testing import WirePipe

SENTINEL = "TOP-SECRET-PIN-1234"
PW = "correct horse battery staple"
WRONG_PW = "WRONG-PASSWORD-SENTINEL-5678"

STRICT: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "title": {"type": "string", "maxLength": 50},
        "body": {"type": "string", "maxLength": 5},
        "pin": {"type": "string", "pattern": "^[0-9]{4}$"},
        "meta": {
            "type": "object",
            "properties": {"tag": {"type": "string", "maxLength": 3}},
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}},
    },
    "maxProperties": 6,
    "encrypted": ["body", "pin", "meta", "tags"],
}
LOOSE: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "title": {"type": "string"},
        "body": {"type": "string"},
    },
}

Open = Callable[..., Awaitable[p2pdb.Collection]]


@pytest.fixture
async def open_notes(tmp_path: Path) -> AsyncIterator[Open]:
    dbs: list[p2pdb.Database] = []

    async def make(name: str, schema: dict[str, Any], password: str | None = PW) -> Any:
        db = await p2pdb.create_database(str(tmp_path / f"{name}.db"), password=password)
        dbs.append(db)
        return await db.add_collection("notes", schema=schema)

    yield make
    for db in dbs:
        await db.close()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="p2pdb")
    return caplog


def texts_of(error: BaseException) -> list[str]:
    """Everything an error shows: message, repr, parameters, JSON form, its causes."""
    out: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        out += [str(current), repr(current), repr(current.args)]
        if isinstance(current, P2PDBError):
            out += [repr(current.parameters), repr(current.to_json())]
        # what a traceback shows: the cause, or the context unless "raise ... from None"
        current = current.__cause__ or (
            None if current.__suppress_context__ else current.__context__
        )
    return out


def assert_clean(
    secret: str, errors: list[BaseException], logs: pytest.LogCaptureFixture
) -> None:
    assert errors, "the step under test must have failed"
    for error in errors:
        for text in texts_of(error):
            assert secret not in text, text
    formatter = logging.Formatter("%(message)s %(args)s")
    for record in logs.records:
        assert secret not in formatter.format(record), record.getMessage()
        assert secret not in repr(record.__dict__), record.getMessage()


# -- writes --------------------------------------------------------------------------------

BAD_DOCS: list[dict[str, Any]] = [
    {"id": "a", "body": SENTINEL},  # maxLength of an encrypted string
    {"id": "b", "pin": SENTINEL},  # pattern
    {"id": "c", "meta": {"tag": SENTINEL}},  # inside an encrypted object
    {"id": "d", "meta": {SENTINEL: 1}},  # a key of an encrypted object is part of it
    {"id": "e", "meta": SENTINEL},  # wrong type
    {"id": "f", "tags": ["ok", SENTINEL]},  # an item of an encrypted array
    {"id": "g", "title": "t", "body": "b", "pin": "1234", "meta": {}, "tags": [], "x": SENTINEL},
]


async def test_invalid_inserts_do_not_quote_encrypted_values(
    open_notes: Open, logs: pytest.LogCaptureFixture
) -> None:
    notes = await open_notes("a", STRICT)
    errors: list[BaseException] = []
    for doc in BAD_DOCS:
        for write in (notes.insert, notes.upsert):
            with pytest.raises(ValidationError) as info:
                await write(doc)
            assert info.value.code == "DOCUMENT_INVALID"
            errors.append(info.value)
    result = await notes.bulk_insert(BAD_DOCS)
    assert result.success == [] and len(result.errors) == len(BAD_DOCS)
    errors += result.errors
    assert_clean(SENTINEL, errors, logs)
    # the error still says where and which rule
    first = errors[0]
    assert isinstance(first, ValidationError)
    assert first.parameters["field"] == "body" and first.parameters["rule"] == "maxLength"
    assert "<encrypted value>" in first.message and "maxLength" in first.message
    # a clear field is still quoted as before
    with pytest.raises(ValidationError) as clear:
        await notes.insert({"id": "h", "title": "CLEAR-" + "x" * 60})
    assert "CLEAR-" in clear.value.message


async def test_invalid_patches_and_duplicates_do_not_quote_encrypted_values(
    open_notes: Open, logs: pytest.LogCaptureFixture
) -> None:
    notes = await open_notes("a", STRICT)
    doc = await notes.insert({"id": "a", "body": "ok", "pin": "1234"})
    errors: list[BaseException] = []
    for changes in ({"body": SENTINEL}, {"pin": SENTINEL}, {"meta": {"tag": SENTINEL}}):
        for attempt in (
            doc.patch(changes),
            doc.modify(lambda d, c=changes: {**d, **c}),
            doc.replace({**doc.to_dict(), **changes}),
        ):
            with pytest.raises(ValidationError) as info:
                await attempt
            errors.append(info.value)
    await notes.upsert({"id": "s", "body": "a", "pin": "0000", "meta": {"tag": "x"}})
    with pytest.raises(ConflictError) as duplicate:
        await notes.insert({"id": "s", "body": "b"})
    assert duplicate.value.code == "DOCUMENT_EXISTS"
    errors.append(duplicate.value)
    assert_clean(SENTINEL, errors, logs)
    stored = await notes.find_one("a")
    assert stored is not None and stored.get("body") == "ok"


# -- replication -----------------------------------------------------------------------------


async def test_a_peers_invalid_document_is_not_quoted_when_pulled(
    open_notes: Open, logs: pytest.LogCaptureFixture
) -> None:
    peer = await open_notes("peer", LOOSE, password=None)
    await peer.bulk_insert([{"id": "bad", "body": SENTINEL}, {"id": "good", "body": "ok"}])
    fork = await open_notes("fork", STRICT)
    errors: list[BaseException] = []
    failed = asyncio.Event()

    def record(error: BaseException) -> None:
        errors.append(error)
        failed.set()

    async with WirePipe(collection_handler(peer)) as pipe:
        async with replicate(fork, pipe.handler, "peer", live=False) as state:
            state.errors.subscribe(record)
            async with asyncio.timeout(20):
                await failed.wait()
                await state.wait_for_in_sync()
        errors += pipe.errors
    assert any(getattr(e, "code", None) == "DOCUMENT_INVALID" for e in errors), errors
    assert [d.id for d in await fork.find()] == ["good"]
    assert_clean(SENTINEL, errors, logs)


async def test_an_invalid_push_is_not_quoted_by_the_master(
    open_notes: Open, logs: pytest.LogCaptureFixture
) -> None:
    master = await open_notes("master", STRICT)
    fork = await open_notes("fork", LOOSE, password=None)
    await fork.bulk_insert([{"id": "bad", "body": SENTINEL}, {"id": "good", "body": "ok"}])
    errors: list[BaseException] = []
    failed = asyncio.Event()

    def record(error: BaseException) -> None:
        errors.append(error)
        failed.set()

    async with WirePipe(collection_handler(master)) as pipe:
        async with replicate(fork, pipe.handler, "to-master", retry_delay=10) as state:
            state.errors.subscribe(record)
            async with asyncio.timeout(20):
                await failed.wait()
        errors += pipe.errors
    assert any("REPLICATION_PUSH_INVALID" in repr(texts_of(e)) for e in errors), errors
    assert [d.id for d in await master.find()] == ["good"]
    assert_clean(SENTINEL, errors, logs)


# -- passwords -------------------------------------------------------------------------------


async def test_a_wrong_password_is_not_quoted(
    tmp_path: Path, logs: pytest.LogCaptureFixture
) -> None:
    path = str(tmp_path / "a.db")
    async with p2pdb.create_database(path, password=PW) as db:
        notes = await db.add_collection("notes", schema=STRICT)
        await notes.insert({"id": "a", "body": "ok"})
        errors: list[BaseException] = []
        with pytest.raises(EncryptionError) as changing:
            await db.change_password(WRONG_PW, "another good password")
        errors.append(changing.value)
    with pytest.raises(EncryptionError) as opening:
        await p2pdb.create_database(path, password=WRONG_PW)
    assert opening.value.code == changing.value.code == "ENCRYPTION_WRONG_PASSWORD"
    errors.append(opening.value)
    assert_clean(WRONG_PW, errors, logs)
    assert_clean(PW, errors, logs)


async def test_an_unencodable_encrypted_value_is_not_quoted(
    open_notes: Open, logs: pytest.LogCaptureFixture
) -> None:
    notes = await open_notes("a", STRICT)
    with pytest.raises(ValidationError) as info:
        await notes.insert({"id": "a", "body": SENTINEL + "\ud800"})
    assert_clean(SENTINEL, [info.value], logs)
