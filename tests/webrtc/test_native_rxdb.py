"""The native engine with RxDB 17.6 in Node (node-datachannel) and aiortc, in one topic.

One RxDB peer, one p2pdb peer on the native engine and one on aiortc replicate through
p2pdb's signaling server: documents written on each reach the two others, updates and
deletes too. It uses the RxDB harness of ``tests/interop`` (``rxdb_harness.py``, its Node
project); like those tests it fails, never skips, when Node or its packages are missing.
``tests/interop`` run with ``P2PDB_WEBRTC_ENGINE=native`` covers every role combination.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("aiolibdatachannel")

INTEROP = Path(__file__).resolve().parent.parent / "interop"
sys.path.insert(0, str(INTEROP))

from node_setup import ensure_node, ensure_node_modules  # noqa: E402
from rxdb_harness import P2pdbPeer, Stack  # noqa: E402

from p2pdb.plugins.replication_webrtc.native_engine import ENGINE_ENVIRONMENT_VARIABLE  # noqa: E402
from p2pdb.plugins.replication_webrtc.native_link import NativeEngine  # noqa: E402

WAIT_MS = 30_000


def todo(doc_id: str, text: str, n: int = 0) -> dict[str, Any]:
    return {"id": doc_id, "text": text, "done": False, "n": n}


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    ensure_node_modules(ensure_node())  # a no-op when tests/interop is ready

    def no_rxdb_signaling() -> str:
        raise AssertionError("this test uses p2pdb's signaling server")

    s = Stack(tmp_path, no_rxdb_signaling)
    try:
        yield s
    finally:
        await s.close()


async def join(
    peer: P2pdbPeer, engine: str, url: str, topic: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENGINE_ENVIRONMENT_VARIABLE, engine)  # read when the factory is made
    await peer.replicate(url, topic)


async def test_native_aiortc_and_rxdb_in_one_topic(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await stack.signaling("p2pdb")
    topic = stack.topic()
    rx = await stack.rxdb("rx", url, topic)
    await rx.call("bulkInsert", docs=[todo(f"rx-{i:03d}", f"RxDB {i}", i) for i in range(100)])
    native = await stack.p2pdb("native")
    await native.collection.bulk_insert([todo(f"nt-{i:03d}", "é" * 500, i) for i in range(100)])
    classic = await stack.p2pdb("aiortc")
    await classic.collection.insert(todo("ai-000", "from aiortc"))
    await join(native, "native", url, topic, monkeypatch)
    await join(classic, "aiortc", url, topic, monkeypatch)
    await asyncio.gather(
        native.wait_peers(2, within=30),
        classic.wait_peers(2, within=30),
        rx.call("waitPeers", count=2, timeoutMs=WAIT_MS),
    )
    assert native.pool is not None and classic.pool is not None
    native_links = native.pool.connection.links
    assert len(native_links) == 2
    assert all(isinstance(link.engine, NativeEngine) for link in native_links)
    assert not any(isinstance(link.engine, NativeEngine) for link in classic.pool.connection.links)

    want = {f"rx-{i:03d}" for i in range(100)} | {f"nt-{i:03d}" for i in range(100)} | {"ai-000"}
    await asyncio.gather(native.wait_count(len(want), 40), classic.wait_count(len(want), 40))
    await rx.call("waitCount", count=len(want), timeoutMs=WAIT_MS, within=40)
    # Every pair's initial sync done, not only the counts (they may come through the third
    # peer first). An edit of a document one pair has not synced yet is pushed there without
    # an assumed master state: a conflict in RxDB's protocol, which the master-wins handler
    # resolves to the master's older state, written as a new revision that every peer then
    # takes (docs/replication.md, "Editing during the initial sync of a mesh").
    await asyncio.gather(
        native.wait_in_sync(40),
        classic.wait_in_sync(40),
        rx.call("awaitInSync", timeoutMs=WAIT_MS, within=40),
    )

    # live changes from each engine reach the others
    doc = await native.collection.find_one("rx-010")
    assert doc is not None
    await doc.patch({"text": "native was here"})
    gone = await classic.collection.find_one("nt-005")
    assert gone is not None
    await gone.remove()
    await rx.call("insert", doc=todo("rx-new", "RxDB, live", 1))
    final = (want - {"nt-005"}) | {"rx-new"}
    edited = todo("rx-010", "native was here", 10)
    # the count is the same before and after (one removed, one inserted): wait for each change
    for peer in (native, classic):
        await peer.wait_doc("nt-005", None, 40)
        await peer.wait_doc("rx-new", todo("rx-new", "RxDB, live", 1), 40)
        await peer.wait_doc("rx-010", edited, 40)
        assert {d.id for d in await peer.collection.find()} == final
    await rx.call("waitFor", docId="rx-010", equals=edited, timeoutMs=WAIT_MS, within=40)
    await rx.call("waitFor", docId="nt-005", equals=None, timeoutMs=WAIT_MS, within=40)
    assert native.errors == [] and classic.errors == []
