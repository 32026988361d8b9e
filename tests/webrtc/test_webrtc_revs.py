"""No redundant traffic in a full mesh of p2pdb peers (issue #13, ``p2pdb.replication.revs``).

Real parts: four databases on SQLite files, the signaling server over WebSockets, aiortc
links on loopback, in one process. Each peer writes documents; every body that crosses a
link is counted by the receiving side, per link and document. With the extension a body
crosses each link at most once, and the bodies delivered stay close to the deliveries that
were needed (each peer getting each other peer's documents once); with ``P2PDB_REVS=0`` every
peer relays every body to all its neighbours.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Mapping
from pathlib import Path

import pytest
from schemas import PEER_SCHEMA as SCHEMA

import p2pdb
from p2pdb.plugins.replication_webrtc import (
    ReplicationPool,
    aiortc_connection_handler,
    replicate_webrtc,
)
from p2pdb.plugins.replication_webrtc.peer import PeerMessage
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer
from p2pdb.replication.revs import is_stub

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

PEERS = 4
DOCS = 25  # per peer
WAIT = 120.0


def body_ids(message: object) -> list[object]:
    """The ids of the document bodies a replication message carries (stubs not counted)."""
    if not isinstance(message, Mapping):
        return []
    if message.get("method") == "masterWrite":
        params = message.get("params")
        rows = params[0] if isinstance(params, list) and params else []
        docs = [r.get("newDocumentState") for r in rows if isinstance(r, Mapping)]
    else:
        result = message.get("result")
        docs = result.get("documents") if isinstance(result, Mapping) else result
    if not isinstance(docs, list):
        return []
    return [d.get("id") for d in docs if isinstance(d, Mapping) and not is_stub(d)]


async def full_mesh(
    tmp_path: Path, url: str, topic: str
) -> tuple[list[p2pdb.Database], list[ReplicationPool], Counter[tuple[int, str, object]]]:
    """Four peers linked with each other, in sync; ``crossings[(receiver, link, id)]``
    counts the bodies each receives, from now on."""
    crossings: Counter[tuple[int, str, object]] = Counter()
    dbs: list[p2pdb.Database] = []
    pools: list[ReplicationPool] = []
    for i in range(PEERS):
        db = await p2pdb.create_database(str(tmp_path / f"p{i}.db"))
        dbs.append(db)
        docs = await db.add_collection("docs", schema=SCHEMA)
        handler = aiortc_connection_handler(url, ice_servers=[], host_addresses=["127.0.0.1"])
        pools.append(await replicate_webrtc(docs, topic, handler))

    def counter(receiver: int):  # noqa: ANN202
        def on_message(message: PeerMessage) -> None:
            for doc_id in body_ids(message.data):
                crossings[(receiver, message.peer.connection_id, doc_id)] += 1

        return on_message

    for i, pool in enumerate(pools):
        pool.connection.messages.subscribe(counter(i))
    async with asyncio.timeout(WAIT):
        for pool in pools:
            await pool.wait_for_in_sync(peers=PEERS - 1, timeout=WAIT)
    return dbs, pools, crossings


async def holds_all(dbs: list[p2pdb.Database], pools: list[ReplicationPool], total: int) -> None:
    async with asyncio.timeout(WAIT):
        for db, pool in zip(dbs, pools, strict=True):
            while await db.collections["docs"].count() < total:
                await pool.wait_for_change()
        for pool in pools:
            await pool.wait_for_in_sync(peers=PEERS - 1, timeout=WAIT)


@pytest.mark.parametrize("revs", [True, False], ids=["revs", "plain"])
async def test_a_full_mesh_moves_each_body_once_per_link_when_needed(
    tmp_path: Path, signaling: SignalingServer, monkeypatch: pytest.MonkeyPatch, revs: bool
) -> None:
    if not revs:
        monkeypatch.setenv("P2PDB_REVS", "0")
    dbs, pools, crossings = await full_mesh(tmp_path, signaling.url, f"revs-mesh-{revs}")
    try:
        assert all(
            all(session.peer.revs is revs for session in pool.sessions.values())
            for pool in pools
        )
        await asyncio.gather(
            *(
                db.collections["docs"].bulk_insert(
                    [{"id": f"p{i}-{n:03d}", "text": f"peer {i}", "n": n} for n in range(DOCS)]
                )
                for i, db in enumerate(dbs)
            )
        )
        await holds_all(dbs, pools, PEERS * DOCS)
        contents = [
            sorted((d.id, d["text"]) for d in await db.collections["docs"].find()) for db in dbs
        ]
        assert all(c == contents[0] for c in contents)
        needed = PEERS * (PEERS - 1) * DOCS  # each peer gets each other peer's documents
        delivered = sum(crossings.values())
        # every peer got every document of the others over some link (a body of its own
        # coming back through a relay counts as delivered, not as needed)
        got = {(r, i) for r, _, i in crossings if not str(i).startswith(f"p{r}-")}
        assert len(got) == needed
        ratio = delivered / needed
        print(f"revs={revs}: {delivered} bodies for {needed} needed ({ratio:.2f})")
        if revs:
            assert max(crossings.values()) == 1, [k for k, v in crossings.items() if v > 1][:5]
            # over 1 only where a relay's stub overtook the origin's body: a race, in
            # batches of DOCS (+0.08 each). 60 quiet runs gave 1.00-1.50, a loaded CI run
            # 1.58; the plain protocol gives 2.9-3.0, and "at most once per link" is above
            assert ratio < 2.0
        else:
            assert ratio >= 2.0  # the plain protocol relays every body to every neighbour
    finally:
        for pool in pools:
            await pool.cancel()
        for db in dbs:
            await db.close()


def test_the_hello_offers_revs_and_reads_only_an_exact_offer() -> None:
    """``"revs": 1`` in a hello offers the extension; anything else (absent, true, "1")
    is no offer, never a failed handshake."""
    from p2pdb.plugins.replication_webrtc.handshake import _Hello

    key = bytes(range(32))
    hello = _Hello("token-a", key, b"n" * 16, (), True)
    wire = hello.to_json()
    assert wire["revs"] == 1
    parsed = _Hello.parse(wire)
    assert parsed is not None and parsed.revs
    for odd in (None, True, "1", 2, [1]):
        other = {k: v for k, v in wire.items() if k != "revs"}
        if odd is not None:
            other["revs"] = odd
        parsed = _Hello.parse(other)
        assert parsed is not None and not parsed.revs
    assert "revs" not in _Hello("token-a", key, b"n" * 16).to_json()
