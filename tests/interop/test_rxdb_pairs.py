"""One p2pdb peer and one real RxDB 17.6 peer (Node) in a topic, in every role combination.

The matrix: signaling through p2pdb's server or RxDB's own ``startSignalingServerSimplePeer``
× p2pdb is the replication master or the fork × p2pdb is the WebRTC initiator or the
responder. Roles are forced, not left to chance: the master comes from the database tokens
(p2pdb databases are created until ``is_master(db.token, rxdb_token)`` gives the wanted
answer), the initiator from the signaling ids (a relay re-rolls the p2pdb side's id).

Each case checks, both ways: documents present before connecting, insert, update, delete,
large documents split into chunks, then concurrent edits made while the RxDB side is offline
(an update against an update, a delete against an update) converging on both sides to the
master's state, as both sides use master-wins handlers (RxDB's default and p2pdb's).
"""

from __future__ import annotations

import asyncio
import json
import random
import string
from typing import Any

import pytest
from rxdb_harness import HERE, P2pdbPeer, RxdbPeer, Stack, WireLog, contents

from p2pdb.conflicts import Conflict, FunctionConflictHandler, deep_equal
from p2pdb.plugins.replication_webrtc import is_master

WAIT_MS = 20_000

CASES = [
    pytest.param(signaling, master, initiator, id=f"{signaling}-signaling-{m}-{i}")
    for signaling in ("p2pdb", "rxdb")
    for master, m in ((True, "p2pdb-master"), (False, "p2pdb-fork"))
    for initiator, i in ((True, "p2pdb-initiates"), (False, "rxdb-initiates"))
]


def todo(doc_id: str, text: str, n: int = 0, **more: Any) -> dict[str, Any]:
    return {"id": doc_id, "text": text, "done": False, "n": n, **more}


async def both_have(py: P2pdbPeer, rx: RxdbPeer, doc_id: str, state: dict[str, Any] | None) -> None:
    """Wait until both sides hold ``state`` for ``doc_id`` (``None``: absent or deleted)."""
    await asyncio.gather(
        py.wait_doc(doc_id, state),
        rx.call("waitFor", docId=doc_id, equals=state, timeoutMs=WAIT_MS),
    )


async def connect_pair(
    stack: Stack,
    signaling: str,
    p2pdb_master: bool,
    p2pdb_initiator: bool,
    conflict_handler: object = None,
    **rx_config: Any,
) -> tuple[P2pdbPeer, RxdbPeer]:
    """An RxDB peer, then a p2pdb peer with the wanted roles against it; both hold one
    document written before they met."""
    url = await stack.signaling(signaling)
    topic = stack.topic()
    rx = await stack.rxdb("rx", url, topic, middle_id=True, **rx_config)
    await rx.call("insert", doc=todo("rx-before", "written on RxDB before we met"))
    py = await stack.p2pdb(
        "py",
        master_against=rx.storage_token,
        want_master=p2pdb_master,
        conflict_handler=conflict_handler,
    )
    await py.collection.insert(todo("py-before", "written on p2pdb before we met"))
    await py.replicate(await stack.initiator_proxy(url, p2pdb_initiator), topic)
    (session,) = await py.wait_peers(1)
    assert session.token == rx.storage_token
    assert session.is_master is p2pdb_master
    assert session.peer.initiator is p2pdb_initiator
    assert await rx.call("waitPeers", count=1, timeoutMs=WAIT_MS) == 1
    return py, rx


@pytest.mark.parametrize(("signaling", "p2pdb_master", "p2pdb_initiator"), CASES)
async def test_pair_replicates_both_ways_and_converges(
    stack: Stack, wire: WireLog, signaling: str, p2pdb_master: bool, p2pdb_initiator: bool
) -> None:
    py, rx = await connect_pair(stack, signaling, p2pdb_master, p2pdb_initiator)
    pool = py.pool
    assert pool is not None

    # what each side held before they met
    await both_have(py, rx, "rx-before", todo("rx-before", "written on RxDB before we met"))
    await both_have(py, rx, "py-before", todo("py-before", "written on p2pdb before we met"))

    # insert, update, delete: p2pdb -> RxDB
    full = todo(
        "py-1",
        "ü€😀 from p2pdb",
        7,
        done=True,
        score=0.25,
        tags=["a", "b"],
        meta={"owner": "py", "rank": 1.5},
    )
    await py.collection.insert(full)
    await both_have(py, rx, "py-1", full)
    doc = await py.collection.find_one("py-1")
    assert doc is not None
    await doc.patch({"text": "updated on p2pdb", "tags": []})
    updated = {**full, "text": "updated on p2pdb", "tags": []}
    await both_have(py, rx, "py-1", updated)

    # insert, update, delete: RxDB -> p2pdb
    from_rx = todo("rx-1", "from RxDB", 3, meta={"owner": "rx"})
    assert await rx.call("insert", doc=from_rx) == from_rx
    await both_have(py, rx, "rx-1", from_rx)
    patched = await rx.call("patch", docId="rx-1", patch={"n": 4, "done": True})
    assert patched == {**from_rx, "n": 4, "done": True}
    await both_have(py, rx, "rx-1", patched)

    removed = await py.collection.find_one("py-1")
    assert removed is not None
    await removed.remove()
    await both_have(py, rx, "py-1", None)
    assert await rx.call("remove", docId="rx-1") is True
    await both_have(py, rx, "rx-1", None)
    # a deleted id written again, each side reviving the other side's tombstone
    await py.collection.insert(todo("rx-1", "revived on p2pdb"))
    await rx.call("insert", doc=todo("py-1", "revived on RxDB"))
    await both_have(py, rx, "rx-1", todo("rx-1", "revived on p2pdb"))
    await both_have(py, rx, "py-1", todo("py-1", "revived on RxDB"))

    # large documents: RxDB splits at 16384 UTF-16 units (inside surrogate pairs), p2pdb
    # at 16 KiB of UTF-8 (at code-point borders: here 8,192 units or less); both must join
    # the other's chunks
    big_py = todo("big-py", "😀" * 20_000)
    big_rx = todo("big-rx", "a" + "😀" * 20_000 + "ü")
    await py.collection.insert(big_py)
    await rx.call("insert", doc=big_rx)
    await both_have(py, rx, "big-py", big_py)
    await both_have(py, rx, "big-rx", big_rx)
    # p2pdb's frames are never longer than RxDB's chunks, and split elsewhere
    assert 8000 < max(wire.frame_lengths) <= 16384

    # conflicts: both sides edit while the RxDB side is offline
    base1, base2 = todo("c1", "base"), todo("c2", "base")
    await py.collection.bulk_insert([base1, base2])
    await both_have(py, rx, "c1", base1)
    await both_have(py, rx, "c2", base2)
    await py.wait_in_sync()
    await rx.call("awaitInSync", timeoutMs=WAIT_MS)
    assert await rx.call("stopReplication") is True
    await py.wait_peers(0)  # the link closed at once: no fork state of ours is left running
    await rx.call("patch", docId="c1", patch={"text": "offline on RxDB"})
    await rx.call("remove", docId="c2")
    c1 = await py.collection.find_one("c1")
    c2 = await py.collection.find_one("c2")
    assert c1 is not None and c2 is not None
    await c1.patch({"text": "offline on p2pdb", "n": 1})
    await c2.patch({"text": "edited on p2pdb"})
    assert await rx.call("startReplication") is True
    await py.wait_peers(1)

    if p2pdb_master:  # RxDB's fork pushes, p2pdb answers with its state, RxDB resolves
        await both_have(py, rx, "c1", todo("c1", "offline on p2pdb", 1))
        await both_have(py, rx, "c2", todo("c2", "edited on p2pdb"))
        conflicts = [a for _, a in wire.requests(pool, "in", "masterWrite") if a and a["result"]]
    else:  # p2pdb's fork pushes, RxDB answers with its state, p2pdb resolves
        await both_have(py, rx, "c1", todo("c1", "offline on RxDB"))
        await both_have(py, rx, "c2", None)
        conflicts = [a for _, a in wire.requests(pool, "out", "masterWrite") if a and a["result"]]
    reported = {doc["id"] for answer in conflicts for doc in answer["result"]}
    assert {"c1", "c2"} <= reported, "the master must have reported both conflicts"

    # everything settles; both sides hold the same documents and nobody reported errors
    await py.wait_in_sync()
    await rx.call("awaitInSync", timeoutMs=WAIT_MS)
    assert await contents(py.collection) == await rx.call("all")
    assert py.errors == []
    assert rx.errors() == []

    # the wire: checkpoints are each master's own form, tombstones travel as _deleted
    if p2pdb_master:
        pulls = wire.requests(pool, "in", "masterChangesSince")
        assert pulls[0][0]["params"][0] is None  # RxDB's first pull starts from nothing
        assert all(set(a["result"]["checkpoint"]) == {"seq"} for _, a in pulls if a)
        # after its restart RxDB resumed from the checkpoint we had given it
        assert any(r["params"][0] is not None for r, _ in pulls[1:])
        sent_tombstones = [
            d
            for event in wire.stream_events(pool, "out")
            if isinstance(event, dict)
            for d in event["documents"]
            if d["_deleted"]
        ]
        assert {**updated, "_deleted": True} in sent_tombstones
    else:
        pulls = wire.requests(pool, "out", "masterChangesSince")
        assert pulls[0][0]["params"] == [None, 100]
        checkpoints = [a["result"]["checkpoint"] for _, a in pulls if a]
        assert checkpoints and all(set(c) == {"id", "lwt"} for c in checkpoints)
        received = [d for _, a in pulls if a for d in a["result"]["documents"]] + [
            d
            for event in wire.stream_events(pool, "in")
            if isinstance(event, dict)
            for d in event["documents"]
        ]
        assert all(set(d) >= {"id", "_deleted"} for d in received)
        assert not any({"_rev", "_meta", "_attachments"} & set(d) for d in received)
        assert any(d["id"] == "rx-1" and d["_deleted"] for d in received)


ELECTION_JS = """
import { isMasterInWebRTCReplication } from 'rxdb/plugins/replication-webrtc';
import { defaultHashSha256 } from 'rxdb';
let input = '';
for await (const chunk of process.stdin) input += chunk;
const answers = [];
for (const [own, other] of JSON.parse(input)) {
    answers.push(await isMasterInWebRTCReplication(defaultHashSha256, own, other));
}
process.stdout.write(JSON.stringify(answers));
"""


async def test_master_election_matches_rxdb(node: str) -> None:
    """``is_master`` gives RxDB's answer (its own function, default SHA-256 hash) for random
    storage tokens and for non-ASCII strings."""
    rng = random.Random(17)
    pairs = [
        ["".join(rng.choices(string.ascii_lowercase, k=10)) for _ in range(2)] for _ in range(300)
    ] + [["ü€😀", "abc"], ["abc", "ü€😀"], ["a|b", "c"], ["", "x"]]
    process = await asyncio.create_subprocess_exec(
        node,
        "--input-type=module",
        "-e",
        ELECTION_JS,
        cwd=str(HERE),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, _ = await process.communicate(json.dumps(pairs).encode())
    assert process.returncode == 0
    assert json.loads(out) == [is_master(own, other) for own, other in pairs]


def larger_n_wins(conflict: Conflict) -> dict[str, Any]:
    """The mirror of the harness's RxDB handler ``{"maxField": "n"}`` (ties: the master)."""
    new, master = conflict.new_document_state, conflict.real_master_state
    return new if new["n"] > master["n"] else master


@pytest.mark.parametrize("p2pdb_master", [True, False], ids=["p2pdb-master", "p2pdb-fork"])
async def test_matching_custom_handlers_decide_alike_in_both_roles(
    stack: Stack, p2pdb_master: bool
) -> None:
    """The fork's handler resolves a pair's conflicts: with the same rule on both sides
    (here: the larger n wins) the outcome does not depend on who is master."""
    py, rx = await connect_pair(
        stack,
        "p2pdb",
        p2pdb_master,
        True,
        conflict_handler=FunctionConflictHandler(larger_n_wins, deep_equal),
        conflictHandler={"maxField": "n"},
    )
    await py.collection.bulk_insert([todo("a", "base", 1), todo("b", "base", 1)])
    await both_have(py, rx, "a", todo("a", "base", 1))
    await both_have(py, rx, "b", todo("b", "base", 1))
    await py.wait_in_sync()
    await rx.call("awaitInSync", timeoutMs=WAIT_MS)
    await rx.call("stopReplication")
    await py.wait_peers(0)
    await rx.call("patch", docId="a", patch={"text": "RxDB's", "n": 5})
    await rx.call("patch", docId="b", patch={"text": "RxDB's", "n": 2})
    for doc_id, n in (("a", 3), ("b", 7)):
        doc = await py.collection.find_one(doc_id)
        assert doc is not None
        await doc.patch({"text": "p2pdb's", "n": n})
    await rx.call("startReplication")
    await both_have(py, rx, "a", todo("a", "RxDB's", 5))
    await both_have(py, rx, "b", todo("b", "p2pdb's", 7))
    assert py.errors == [] and rx.errors() == []


@pytest.mark.slow
async def test_slow_signaling_answer_after_ice_checks(stack: Stack) -> None:
    """RxDB offers; p2pdb answers through a slow signaling path, so its ICE checks reach
    libdatachannel long before its answer does and ICE connects before RxDB has committed
    our description. libdatachannel 0.24 then checks our DTLS certificate with SHA-256
    whatever our SDP said; p2pdb must offer a sha-256 fingerprint only (it used to list
    sha-256/384/512, and about one handshake in four failed with "unknown CA", after which
    RxDB waited out its 15 s connect timeout)."""
    url = await stack.signaling("p2pdb")
    topic = stack.topic()
    rx = await stack.rxdb("rx", url, topic, middle_id=True)
    py = await stack.p2pdb("py")
    slow = await stack.initiator_proxy(url, initiator=False, signal_delay=0.3)
    await py.replicate(slow, topic)
    for round_ in range(8):
        (session,) = await py.wait_peers(1)
        assert not session.peer.initiator
        doc = todo(f"r{round_}", "over a slow signaling path")
        await rx.call("insert", doc=doc)
        await both_have(py, rx, doc["id"], doc)
        assert py.errors == [] and rx.errors() == [], f"round {round_}"
        await rx.call("stopReplication")  # RxDB comes back with a new id and a new offer
        await py.wait_peers(0)
        await rx.call("startReplication")
