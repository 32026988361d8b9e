"""Composite primary keys with a real RxDB 17.6 peer: the same schema
(``primaryKey: {key, fields, separator}``) on both sides, documents written without the key
field on each side (each fills it in), replicated both ways with p2pdb as master and as
fork, numbers in the key written alike (``1815.0`` is ``"1815"``, ``1e21`` is ``"1e+21"``),
and RxDB's document with the separator inside a field (RxDB stores it, p2pdb refuses it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from rxdb_harness import Stack, contents

from p2pdb.errors import P2PDBError

WAIT_MS = 20_000

PEOPLE: dict[str, Any] = {
    "version": 0,
    "primaryKey": {"key": "id", "fields": ["lastName", "firstName", "born"], "separator": "|"},
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "firstName": {"type": "string", "maxLength": 30},
        "lastName": {"type": "string", "maxLength": 30},
        "born": {"type": "number"},
        "note": {"type": "string"},
    },
    "required": ["id", "firstName", "lastName", "born"],
    "indexes": ["lastName"],
    "additionalProperties": False,
}


def person(first: str, last: str, born: float, **more: Any) -> dict[str, Any]:
    """A document as written: without its key."""
    return {"firstName": first, "lastName": last, "born": born, **more}


def keyed(doc: dict[str, Any], key: str) -> dict[str, Any]:
    """A document as both sides store it, with its composed key."""
    return {**doc, "id": key}


def by_key(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(docs, key=lambda d: str(d["id"]))


@pytest.mark.parametrize("p2pdb_master", [True, False], ids=["p2pdb-master", "p2pdb-fork"])
async def test_composite_keys_replicate_both_ways(stack: Stack, p2pdb_master: bool) -> None:
    url = await stack.signaling("p2pdb")
    topic = stack.topic()
    rx = await stack.rxdb("rx", url, topic, PEOPLE)
    await rx.call("stopReplication")
    ada = person("Ada", "Lovelace", 1815.0)
    huge = person("Big", "Number", 1e21)
    from_rx = [await rx.call("insert", doc=doc) for doc in (ada, huge)]
    assert [d["id"] for d in from_rx] == ["Lovelace|Ada|1815", "Number|Big|1e+21"]

    py = await stack.p2pdb("py", PEOPLE, master_against=rx.storage_token, want_master=p2pdb_master)
    grace, half = person("Grace", "Hopper", 1906), person("Half", "Way", 0.5, note="p2pdb")
    written = (await py.collection.bulk_insert([grace, half])).success
    assert [d.id for d in written] == ["Hopper|Grace|1906", "Way|Half|0.5"]
    await py.replicate(url, topic)
    await rx.call("startReplication")
    (session,) = await py.wait_peers(1)
    assert session.is_master is p2pdb_master

    everything = by_key(
        [
            keyed(ada, "Lovelace|Ada|1815"),
            keyed(huge, "Number|Big|1e+21"),
            keyed(grace, "Hopper|Grace|1906"),
            keyed(half, "Way|Half|0.5"),
        ]
    )
    await rx.call("waitAll", docs=everything, timeoutMs=WAIT_MS)
    await py.wait_contents(everything)

    # live, both ways: updates of other fields, a removal, inserts without the key field
    await rx.call("patch", docId="Hopper|Grace|1906", patch={"note": "from rxdb"})
    await py.wait_doc(
        "Hopper|Grace|1906", keyed({**grace, "note": "from rxdb"}, "Hopper|Grace|1906")
    )
    ada_here = await py.collection.find_one("Lovelace|Ada|1815")
    assert ada_here is not None
    await ada_here.patch({"note": "from p2pdb"})
    await rx.call(
        "waitFor",
        docId="Lovelace|Ada|1815",
        equals=keyed({**ada, "note": "from p2pdb"}, "Lovelace|Ada|1815"),
        timeoutMs=WAIT_MS,
    )
    await py.collection.remove_document("Number|Big|1e+21")
    await rx.call("waitFor", docId="Number|Big|1e+21", equals=None, timeoutMs=WAIT_MS)
    await rx.call("insert", doc=person("Alan", "Turing", 1912))
    await py.wait_doc("Turing|Alan|1912", keyed(person("Alan", "Turing", 1912), "Turing|Alan|1912"))
    await py.collection.insert(person("Katherine", "Johnson", 1918))
    await rx.call(
        "waitFor",
        docId="Johnson|Katherine|1918",
        equals=keyed(person("Katherine", "Johnson", 1918), "Johnson|Katherine|1918"),
        timeoutMs=WAIT_MS,
    )
    final = by_key(await rx.call("all"))
    await py.wait_contents(final)
    assert [d["id"] for d in final] == [
        "Hopper|Grace|1906",
        "Johnson|Katherine|1918",
        "Lovelace|Ada|1815",
        "Turing|Alan|1912",
        "Way|Half|0.5",
    ]
    found = await py.collection.find({"lastName": "Turing"})  # the index on a key field
    assert [d.id for d in found] == ["Turing|Alan|1912"]
    assert rx.errors() == [] and py.errors == []


async def test_a_separator_inside_a_field_is_refused_from_rxdb(stack: Stack) -> None:
    """RxDB joins the fields without looking: ``("a|b", "c")`` and ``("a", "b|c")`` would
    share a key. p2pdb (here the fork) reports such a document and stores the others."""
    url = await stack.signaling("p2pdb")
    topic = stack.topic()
    rx = await stack.rxdb("rx", url, topic, PEOPLE)
    await rx.call("stopReplication")
    await rx.call("insert", doc=person("Ada", "Love|lace", 1815))
    fine = await rx.call("insert", doc=person("Alan", "Turing", 1912))
    py = await stack.p2pdb("py", PEOPLE, master_against=rx.storage_token, want_master=False)
    await py.replicate(url, topic)
    reported = asyncio.Event()
    assert py.pool is not None
    py.pool.errors.subscribe(lambda _error: reported.set())
    await rx.call("startReplication")

    await py.wait_doc("Turing|Alan|1912", fine)
    async with asyncio.timeout(WAIT_MS / 1000):
        while not py.errors:
            reported.clear()
            await reported.wait()
    (error,) = py.errors
    assert isinstance(error, P2PDBError)
    assert error.code == "DOCUMENT_PRIMARY_KEY_SEPARATOR"
    assert error.parameters["document_id"] == "Love|lace|Ada|1815"
    assert await contents(py.collection) == [fine]
