"""``replicate_webrtc`` options: one dataclass, keyword shortcuts mirroring it, checked
values, the documented calls type-check, and no task before ``start()``."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import get_type_hints

import pytest
from reactivex.subject import Subject
from schemas import PEER_SCHEMA

import p2pdb
from p2pdb.errors import ValidationError
from p2pdb.plugins.replication_webrtc import (
    ConnectionOptions,
    Peer,
    ReplicationPool,
    WebRTCReplicationOptions,
    aiortc_connection_handler,
    replicate_webrtc,
    sha256_hex,
)
from p2pdb.plugins.replication_webrtc.options import WebRTCOptionKeywords, option_names
from p2pdb.plugins.replication_webrtc.signaling_server import SignalingServer

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture
async def docs(tmp_path: Path) -> AsyncIterator[p2pdb.Collection]:
    db = await p2pdb.create_database(str(tmp_path / "a.db"))
    yield await db.add_collection("docs", schema=PEER_SCHEMA)
    await db.close()


@pytest.mark.engine_neutral
def test_keyword_shortcuts_mirror_the_options() -> None:
    names = {"Peer": Peer}
    keywords = get_type_hints(WebRTCOptionKeywords, localns=names)
    assert set(keywords) == option_names()
    defaults = get_type_hints(WebRTCReplicationOptions, localns=names)
    assert {name: keywords[name] for name in option_names()} == {
        name: defaults[name] for name in option_names()
    }


@pytest.mark.engine_neutral
def test_connection_options_mirror_the_handler_keywords() -> None:
    """Every field of ConnectionOptions is a keyword of aiortc_connection_handler, with the
    same default, and the other way round (but the URL and ``options`` itself)."""
    params = inspect.signature(aiortc_connection_handler).parameters
    keywords = {name: p.default for name, p in params.items()}
    del keywords["signaling_url"], keywords["options"]
    fields = {f.name: f.default for f in dataclasses.fields(ConnectionOptions)}
    assert fields == keywords


@pytest.mark.engine_neutral
def test_connection_options_are_checked_like_keywords() -> None:
    with pytest.raises(ValidationError) as caught:
        aiortc_connection_handler("ws://127.0.0.1:1", options=ConnectionOptions(relay_only=True))
    assert caught.value.code == "WEBRTC_ICE_SERVER_INVALID"
    with pytest.raises(ValidationError) as caught:
        aiortc_connection_handler("ws://127.0.0.1:1", options=ConnectionOptions(max_links=0))
    assert caught.value.code == "WEBRTC_SETTING_INVALID"


@pytest.mark.engine_neutral
def test_options_and_keywords_together_are_refused() -> None:
    with pytest.raises(ValidationError) as caught:
        aiortc_connection_handler(
            "ws://127.0.0.1:1", ice_servers=[], options=ConnectionOptions(connect_timeout=5)
        )
    assert caught.value.code == "WEBRTC_SETTING_INVALID"
    assert "not both" in str(caught.value)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("batch_size", 0),
        ("batch_size", 2.5),
        ("request_timeout", 0),
        ("heartbeat_interval", -1.0),
        ("heartbeat_timeout", True),
    ],
)
@pytest.mark.engine_neutral
def test_bad_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        WebRTCReplicationOptions(**{field: value})  # type: ignore[arg-type]
    assert caught.value.code == "WEBRTC_SETTING_INVALID"
    assert caught.value.parameters["setting"] == field


async def test_options_and_shortcuts_reach_the_pool(
    docs: p2pdb.Collection, signaling: SignalingServer
) -> None:
    handler = aiortc_connection_handler(signaling.url, ice_servers=[], host_addresses=["127.0.0.1"])
    base = WebRTCReplicationOptions(batch_size=7, request_timeout=3.0)
    async with await replicate_webrtc(
        docs, "p2pdb-options-room", handler, options=base, request_timeout=9.0
    ) as pool:
        assert pool.options == WebRTCReplicationOptions(batch_size=7, request_timeout=9.0)
        assert pool.options.hash_function is sha256_hex
    with pytest.raises(ValidationError):
        await replicate_webrtc(docs, "p2pdb-options-room", handler, batch_size=0)


async def test_pool_constructor_starts_nothing(
    docs: p2pdb.Collection, signaling: SignalingServer
) -> None:
    handler = aiortc_connection_handler(signaling.url, ice_servers=[], host_addresses=["127.0.0.1"])
    connection = await handler("p2pdb-options-room")
    tasks = asyncio.all_tasks()
    pool = ReplicationPool(docs, "p2pdb-options-room", connection)
    connects = pool.connection.connects  # its collection's port on the handler
    assert isinstance(connects, Subject) and pool.connection.handler is connection
    assert asyncio.all_tasks() == tasks and not connects.observers
    assert not connection.has_port(docs.name)  # not attached before start()
    async with pool:  # starts, then cancels (closing the connection handler)
        assert connects.observers and connection.has_port(docs.name)
    assert pool.sessions == {} and not connects.observers and connection.closing


@pytest.mark.engine_neutral
def test_documented_calls_type_check(tmp_path: Path) -> None:
    """The calls of README.md and docs/ (and the new options object) pass mypy --strict."""
    script = tmp_path / "user_script.py"
    script.write_text(
        textwrap.dedent(
            """
            import p2pdb
            from p2pdb.plugins.replication_webrtc import (
                Peer,
                WebRTCReplicationOptions,
                aiortc_connection_handler,
                replicate_webrtc,
            )


            def valid(peer: Peer) -> bool:
                return True


            async def main(todos: p2pdb.Collection) -> None:
                handler = aiortc_connection_handler("ws://127.0.0.1:8080", ice_servers=[])
                pool = await replicate_webrtc(todos, "my-app-todos", handler)
                await pool.cancel()
                pool = await replicate_webrtc(
                    todos, "my-app-todos", handler, is_peer_valid=valid, batch_size=50,
                    request_timeout=5.0, hash_function=lambda text: text,
                )
                await pool.cancel()
                options = WebRTCReplicationOptions(heartbeat_interval=2.0)
                pool = await replicate_webrtc(todos, "my-app-todos", handler, options=options)
                await pool.wait_for_in_sync()
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(script)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
