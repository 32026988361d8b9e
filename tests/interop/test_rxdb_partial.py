"""Partial replication with a real RxDB 17.6 peer: RxDB's own ``pull.modifier`` and
``push.modifier`` (``rxdb_modifier_peer.mjs``) against a p2pdb master that serves only a
selector's documents (``replicate_webrtc(..., selector=...)``) over WebRTC.
"""

from __future__ import annotations

import json
from typing import Any

from rxdb_harness import SCHEMA, P2pdbPeer, RxdbPeer, Stack

WAIT_MS = 20_000
SHARED = {"n": {"$lt": 100}}  # the master serves only these


def todo(doc_id: str, text: str, n: int) -> dict[str, Any]:
    return {"id": doc_id, "text": text, "done": False, "n": n}


def rx_form(doc: dict[str, Any]) -> dict[str, Any]:
    """A document as the RxDB peer holds it after its pull.modifier."""
    return {**doc, "text": "rx:" + doc["text"]}


async def start_modifier_peer(stack: Stack, url: str, topic: str) -> RxdbPeer:
    config = {
        "signalingUrl": url,
        "topic": topic,
        "schema": SCHEMA,
        "dbName": "rxmod",
        "modifiers": {"field": "text", "prefix": "rx:", "dropAtLeast": 1000},
    }
    peer = await RxdbPeer.spawn("rxmod", "rxdb_modifier_peer.mjs", json.dumps(config))
    stack.rxdb_peers.append(peer)  # quit with the stack
    ready = await peer.wait_event(lambda e: e["event"] == "ready")
    peer.storage_token = str(ready["storageToken"])
    return peer


async def test_rxdb_modifiers_against_a_p2pdb_master_with_a_selector(stack: Stack) -> None:
    url = await stack.signaling("p2pdb")
    topic = stack.topic()
    rx = await start_modifier_peer(stack, url, topic)
    py: P2pdbPeer = await stack.p2pdb("py", master_against=rx.storage_token, want_master=True)
    shared = [todo(f"a{i}", f"shared {i}", i) for i in range(5)]
    hidden = [todo(f"b{i}", f"not served {i}", 500 + i) for i in range(5)]
    await py.collection.bulk_insert(shared + hidden)
    await py.replicate(url, topic, selector=SHARED)
    (session,) = await py.wait_peers(1)
    assert session.is_master is True

    # RxDB pulls only the selector's documents, through its pull.modifier
    await rx.call("waitAll", docs=[rx_form(d) for d in shared], timeoutMs=WAIT_MS)

    # RxDB's pushes go through its push.modifier, and their assumed states too
    await rx.call("insert", doc=todo("r1", "rx:from rxdb", 1))
    await py.wait_doc("r1", todo("r1", "from rxdb", 1))
    await rx.call("patch", docId="a0", patch={"text": "rx:edited on rxdb"})
    await py.wait_doc("a0", todo("a0", "edited on rxdb", 0))
    # push.modifier returning null: the row is not pushed (the next one is)
    await rx.call("insert", doc=todo("r-local", "rx:stays on rxdb", 2000))
    await rx.call("insert", doc=todo("r2", "rx:after the dropped one", 2))
    await py.wait_doc("r2", todo("r2", "after the dropped one", 2))
    assert await py.collection.find_one("r-local") is None

    # hidden documents changing on the master (an update, a deletion) reach RxDB as nothing;
    # a matching write after them arrives, so RxDB's checkpoint passed them with no gap
    doc = await py.collection.find_one("b1")
    assert doc is not None
    await doc.patch({"text": "still not served"})
    await py.collection.remove_document("b0")
    await py.collection.insert(todo("a5", "shared later", 5))
    await rx.call(
        "waitFor", docId="a5", equals=rx_form(todo("a5", "shared later", 5)), timeoutMs=WAIT_MS
    )
    await py.wait_in_sync()
    on_rxdb = {d["id"]: d for d in await rx.call("all")}
    assert set(on_rxdb) == {"a0", "a1", "a2", "a3", "a4", "a5", "r1", "r2", "r-local"}
    assert on_rxdb["a0"]["text"] == "rx:edited on rxdb"
    assert all(not str(d["text"]).startswith("rx:rx:") for d in on_rxdb.values())  # no echo
    on_p2pdb = {d.id: d.to_dict() for d in await py.collection.find()}
    assert all(not d["text"].startswith("rx:") for d in on_p2pdb.values())
    assert rx.errors() == [] and py.errors == []
