"""Where p2pdb behaves differently from an RxDB peer, seen from a real RxDB 17.6 peer."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from rxdb_harness import SCHEMA, RxdbError, Stack, contents

from p2pdb.errors import P2PDBError

WAIT_MS = 20_000

# The RxDB app's schema is looser than p2pdb's: any number for n, no index on it.
LOOSE_SCHEMA: dict[str, Any] = copy.deepcopy(SCHEMA)
LOOSE_SCHEMA["properties"]["n"] = {"type": "number"}
del LOOSE_SCHEMA["indexes"]


def todo(doc_id: str, text: str, n: float = 0, **more: Any) -> dict[str, Any]:
    return {"id": doc_id, "text": text, "done": False, "n": n, **more}


def codes(errors: list[Exception]) -> list[str]:
    return [e.code for e in errors if isinstance(e, P2PDBError)]


@pytest.mark.parametrize("p2pdb_master", [True, False], ids=["p2pdb-master", "p2pdb-fork"])
async def test_documents_from_rxdb_are_validated(stack: Stack, p2pdb_master: bool) -> None:
    """RxDB trusts what a peer sends; p2pdb validates every pushed or pulled document
    against its schema and stores only the valid ones. As master it answers a push holding
    invalid documents with an error (after writing the valid rows) and drops the peer
    (WEBRTC_INVALID_DATA); as fork it reports each invalid document and goes on."""
    url = await stack.signaling("p2pdb")
    topic = stack.topic()
    rx = await stack.rxdb("rx", url, topic, LOOSE_SCHEMA)
    await rx.call("stopReplication")
    good, bad = todo("good", "fits both schemas", 2), todo("bad", "n breaks p2pdb's", -1.5)
    await rx.call("bulkInsert", docs=[good, bad])
    py = await stack.p2pdb("py", master_against=rx.storage_token, want_master=p2pdb_master)
    await py.replicate(url, topic)
    reported = asyncio.Event()
    assert py.pool is not None
    py.pool.errors.subscribe(lambda _error: reported.set())
    await rx.call("startReplication")

    await py.wait_doc("good", good)
    async with asyncio.timeout(WAIT_MS / 1000):
        while not py.errors:
            reported.clear()
            await reported.wait()
    assert await contents(py.collection) == [good]
    if p2pdb_master:
        assert "WEBRTC_INVALID_DATA" in codes(py.errors)
        # RxDB's push was answered with an error (then the link was dropped)
        await rx.wait_event(lambda e: e["event"] == "error")
    else:
        (error,) = py.errors
        assert isinstance(error, P2PDBError) and error.parameters["document_id"] == "bad"
        assert await py.wait_peers(1)  # a fork keeps the link: the master did nothing wrong


async def test_unknown_methods_get_an_error_answer(stack: Stack) -> None:
    """RxDB never answers a request for a method it does not know (the caller waits out its
    timeout); p2pdb answers at once with an error in RxDB's shape, reports it, and keeps
    the link. RxDB's own request helper sees that error."""
    url = await stack.signaling("rxdb")
    topic = stack.topic()
    rx = await stack.rxdb("rx", url, topic)
    py = await stack.p2pdb("py")
    await py.replicate(url, topic)
    await asyncio.gather(py.wait_peers(1), rx.call("waitPeers", count=1, timeoutMs=WAIT_MS))

    assert await rx.call("request", method="token", params=[]) == py.db.token
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(RxdbError, match="remote peer responded with an error"):
        await rx.call("request", method="masterChangesStream", params=[], timeoutMs=10_000)
    assert loop.time() - started < 5  # answered, not timed out
    assert "WEBRTC_PROTOCOL_VIOLATION" in codes(py.errors)
    await rx.call("insert", doc=todo("after", "the link is still up"))
    await py.wait_doc("after", todo("after", "the link is still up"))
