"""Choosing the WebRTC engine: runs on every Python (no aiolibdatachannel needed).

The native engine is loaded only when chosen; choosing it where it cannot load raises
``WEBRTC_ENGINE_UNAVAILABLE`` with the install hint, at factory time (before any topic is
joined); an unknown engine name is a ``WEBRTC_SETTING_INVALID``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from p2pdb.errors import ValidationError
from p2pdb.plugins.replication_webrtc import aiortc_connection_handler
from p2pdb.plugins.replication_webrtc.native_engine import (
    ENGINE_ENVIRONMENT_VARIABLE,
    native_ice_urls,
    resolve_engine,
)
from p2pdb.plugins.replication_webrtc.native_link import filter_host_candidates


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, **env}
    environment.pop(ENGINE_ENVIRONMENT_VARIABLE, None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


def test_importing_p2pdb_and_the_plugin_loads_no_native_library() -> None:
    result = run_python(
        """
        import sys
        import p2pdb
        from p2pdb.plugins.replication_webrtc import aiortc_connection_handler
        aiortc_connection_handler("ws://127.0.0.1:1", ice_servers=[])
        print(sorted(m for m in sys.modules if m.startswith("aiolibdatachannel")))
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_choosing_native_without_the_wheel_says_how_to_install() -> None:
    # sys.modules[name] = None makes every import of it fail, as when it is not installed
    result = run_python(
        """
        import sys
        sys.modules["aiolibdatachannel"] = None
        from p2pdb.errors import ReplicationError
        from p2pdb.plugins.replication_webrtc import aiortc_connection_handler
        try:
            aiortc_connection_handler("ws://127.0.0.1:1", ice_servers=[], engine="native")
        except ReplicationError as error:
            print(error.code)
            print(error)
        """
    )
    assert result.returncode == 0, result.stderr
    code, message = result.stdout.strip().split("\n", 1)
    assert code == "WEBRTC_ENGINE_UNAVAILABLE"
    assert "pip install 'p2pdb[native]'" in message and "3.12" in message


def test_the_environment_variable_chooses_the_default_engine() -> None:
    result = run_python(
        """
        import sys
        sys.modules["aiolibdatachannel"] = None
        from p2pdb.errors import ReplicationError
        from p2pdb.plugins.replication_webrtc import aiortc_connection_handler
        aiortc_connection_handler("ws://127.0.0.1:1", engine="aiortc")  # explicit wins
        try:
            aiortc_connection_handler("ws://127.0.0.1:1")
        except ReplicationError as error:
            print(error.code)
        """,
        **{ENGINE_ENVIRONMENT_VARIABLE: "native"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "WEBRTC_ENGINE_UNAVAILABLE"


def test_resolve_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENGINE_ENVIRONMENT_VARIABLE, raising=False)
    assert resolve_engine(None) == "aiortc"
    assert resolve_engine("native") == "native"
    monkeypatch.setenv(ENGINE_ENVIRONMENT_VARIABLE, "native")
    assert resolve_engine(None) == "native"
    assert resolve_engine("aiortc") == "aiortc"
    monkeypatch.setenv(ENGINE_ENVIRONMENT_VARIABLE, "libwebrtc")
    with pytest.raises(ValidationError) as caught:
        resolve_engine(None)
    assert caught.value.code == "WEBRTC_SETTING_INVALID"
    assert ENGINE_ENVIRONMENT_VARIABLE in str(caught.value)
    with pytest.raises(ValidationError):
        aiortc_connection_handler("ws://127.0.0.1:1", engine="chrome")


def test_ice_servers_map_to_libdatachannel_urls() -> None:
    class Server:
        def __init__(self, urls: object, username: str | None, credential: str | None):
            self.urls, self.username, self.credential = urls, username, credential

    urls = native_ice_urls(
        [
            Server("stun:stun.example:3478", None, None),
            Server(["turn:relay.example:3478?transport=udp", "turns:relay.example"], "u@x", "p:w"),
        ]
    )
    assert urls == (
        "stun:stun.example:3478",
        "turn:u%40x:p%3Aw@relay.example:3478?transport=udp",
        "turns:u%40x:p%3Aw@relay.example",
    )


SDP = (
    "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
    "a=candidate:2 1 UDP 2116026111 fd00::2 53581 typ host\r\n"
    "a=candidate:1 1 UDP 2114977791 192.0.2.2 53581 typ host\r\n"
    "a=candidate:3 1 UDP 1 203.0.113.9 4000 typ srflx raddr 0.0.0.0 rport 0\r\n"
    "a=end-of-candidates\r\n"
)


def test_host_addresses_select_the_announced_host_candidates() -> None:
    assert filter_host_candidates(SDP, None) == SDP
    only_v4 = filter_host_candidates(SDP, ["192.0.2.2"])
    assert "192.0.2.2 53581 typ host" in only_v4 and "fd00::2" not in only_v4
    assert "typ srflx" in only_v4  # only host candidates are filtered
    loopback = filter_host_candidates(SDP, ["127.0.0.1"])
    lines = loopback.split("\r\n")
    assert "a=candidate:90 1 UDP 2130706431 127.0.0.1 53581 typ host" in lines
    assert lines.index("a=end-of-candidates") > lines.index(
        "a=candidate:90 1 UDP 2130706431 127.0.0.1 53581 typ host"
    )
    assert "192.0.2.2" not in loopback


def test_a_host_with_only_loopback_announces_the_chosen_port() -> None:
    bare = "v=0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=end-of-candidates\r\n"
    assert filter_host_candidates(bare, ["127.0.0.1"]) == bare  # no port known: nothing
    announced = filter_host_candidates(bare, ["127.0.0.1"], 5000).split("\r\n")
    assert "a=candidate:90 1 UDP 2130706431 127.0.0.1 5000 typ host" in announced


def test_the_native_log_switch_routes_libdatachannel_into_logging() -> None:
    """``P2PDB_NATIVE_RTC_LOG`` (a diagnostic switch) sends libdatachannel's own log to the
    ``p2pdb.webrtc.libdatachannel`` logger; an unknown level is refused by name."""
    pytest.importorskip("aiolibdatachannel")
    code = """
        import asyncio, logging
        from p2pdb.plugins.replication_webrtc import native_bridge as bridge
        from p2pdb.plugins.replication_webrtc.native_engine import load_native

        records = []
        handler = logging.Handler()
        handler.emit = records.append
        logging.getLogger("p2pdb.webrtc.libdatachannel").addHandler(handler)
        logging.getLogger("p2pdb.webrtc.libdatachannel").setLevel(logging.DEBUG)

        async def main():
            quiet = lambda value: None
            core, config = load_native(), bridge.NativeConfig()
            pc = bridge.NativePeerConnection(core, config, on_state=quiet, on_channel=quiet)
            pc.create_channel("log")
            await pc.describe("offer")
            await pc.close()

        asyncio.run(main())
        print("gathering" in " ".join(r.getMessage() for r in records))
    """
    done = run_python(code, P2PDB_NATIVE_RTC_LOG="debug")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    refused = run_python(
        "from p2pdb.plugins.replication_webrtc.native_engine import load_native; load_native()",
        P2PDB_NATIVE_RTC_LOG="chatty",
    )
    assert refused.returncode != 0
    assert "WEBRTC_SETTING_INVALID" in refused.stderr or "P2PDB_NATIVE_RTC_LOG" in refused.stderr
    assert "chatty" in refused.stderr
