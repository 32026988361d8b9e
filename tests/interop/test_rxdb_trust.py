"""RxDB 17.6 peers and p2pdb's authenticated peers.

An RxDB peer cannot answer the p2pdb handshake: it ignores the extra parameter of our
``token`` request and answers with its bare token, so it is an unauthenticated peer. With
the default settings it replicates as before, in both roles; once the p2pdb side requires
authenticated peers (``require_authenticated`` or ``trusted_peers``) it is refused with
``WEBRTC_PEER_UNTRUSTED`` and no document crosses.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from rxdb_harness import P2pdbPeer, RxdbPeer, Stack

from p2pdb.errors import P2PDBError

WAIT_MS = 20_000
ROLES = [pytest.param(True, id="p2pdb-master"), pytest.param(False, id="p2pdb-fork")]


def todo(doc_id: str, text: str) -> dict[str, Any]:
    return {"id": doc_id, "text": text, "done": False, "n": 0}


async def pair(stack: Stack, p2pdb_master: bool, **options: Any) -> tuple[P2pdbPeer, RxdbPeer]:
    url = await stack.signaling("p2pdb")
    topic = stack.topic()
    rx = await stack.rxdb("rx", url, topic)
    await rx.call("insert", doc=todo("rx-before", "from RxDB"))
    py = await stack.p2pdb("py", master_against=rx.storage_token, want_master=p2pdb_master)
    await py.collection.insert(todo("py-before", "from p2pdb"))
    await py.replicate(url, topic, **options)
    return py, rx


async def first_error(py: P2pdbPeer, code: str, within: float = 20.0) -> P2PDBError:
    async with asyncio.timeout(within):
        while True:
            for error in py.errors:
                if isinstance(error, P2PDBError) and error.code == code:
                    return error
            assert py.pool is not None
            await py.pool.wait_for_change()


@pytest.mark.parametrize("p2pdb_master", ROLES)
async def test_rxdb_peers_replicate_with_the_defaults(stack: Stack, p2pdb_master: bool) -> None:
    py, rx = await pair(stack, p2pdb_master)
    (session,) = await py.wait_peers(1)
    assert session.token == rx.storage_token
    assert session.peer.public_key is None  # unauthenticated, admitted by the defaults
    await py.wait_doc("rx-before", todo("rx-before", "from RxDB"))
    await rx.call(
        "waitFor", docId="py-before", equals=todo("py-before", "from p2pdb"), timeoutMs=WAIT_MS
    )
    await py.collection.insert(todo("py-after", "live"))
    await rx.call("waitFor", docId="py-after", equals=todo("py-after", "live"), timeoutMs=WAIT_MS)
    assert not [e for e in py.errors if "HANDSHAKE" in getattr(e, "code", "")]
    assert not rx.errors()


@pytest.mark.parametrize("p2pdb_master", ROLES)
@pytest.mark.parametrize("rule", ["require_authenticated", "trusted_peers"])
async def test_rxdb_peers_are_refused_when_authentication_is_required(
    stack: Stack, p2pdb_master: bool, rule: str
) -> None:
    options: dict[str, Any] = (
        {"require_authenticated": True} if rule == "require_authenticated"
        else {"trusted_peers": ["A" * 43]}
    )  # fmt: skip
    py, rx = await pair(stack, p2pdb_master, **options)
    error = await first_error(py, "WEBRTC_PEER_UNTRUSTED")
    assert "did not authenticate (an RxDB peer" in str(error)
    # the refused peer comes back (it reconnects) and is refused again; nothing crossed
    async with asyncio.timeout(20):
        while sum(getattr(e, "code", "") == "WEBRTC_PEER_UNTRUSTED" for e in py.errors) < 2:
            assert py.pool is not None
            await py.pool.wait_for_change()
    assert await py.collection.find_one("rx-before") is None
    assert [d["id"] for d in await rx.call("all")] == ["rx-before"]
