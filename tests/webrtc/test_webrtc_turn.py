"""Relay-only connections through a real TURN server (coturn) on 127.0.0.1."""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun
from webrtc_helpers import HandlerMaker

TURN_USER, TURN_PASSWORD = "p2pdb", "secret-pass"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def stun_answers(port: int) -> bool:
    """True once something answers a STUN Binding request on 127.0.0.1:port."""
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.settimeout(0.1)
        probe.sendto(bytes(request), ("127.0.0.1", port))
        try:
            data = probe.recv(2048)
        except OSError:
            return False
    return stun.parse_message(data).transaction_id == request.transaction_id


@pytest.fixture
def turn_server(tmp_path: Path) -> Iterator[str]:
    """Start coturn on a free port; yield its ``turn:`` URL; stop it by PID."""
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.fail(
            "coturn's `turnserver` is not installed, so the TURN test cannot run; "
            "install it with `apt-get install coturn` (the CI script does)."
        )
    port = free_udp_port()
    relay_min = 50000 + port % 10000  # a per-port relay range keeps parallel runs apart
    command = [
        binary,
        "-n",  # no configuration file
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        f"--min-port={relay_min}",
        f"--max-port={relay_min + 200}",
        f"--user={TURN_USER}:{TURN_PASSWORD}",
        "--realm=p2pdb.test",
        "--lt-cred-mech",
        "--no-tls",
        "--no-dtls",
        "--allow-loopback-peers",  # coturn refuses 127.x.x.x peers otherwise
        "--no-cli",
        f"--userdb={tmp_path / 'turndb'}",
        f"--pidfile={tmp_path / 'turnserver.pid'}",
        f"--log-file={tmp_path / 'turnserver.log'}",
        "--simple-log",
        "--no-stdout-log",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # up to ~10 s; it usually answers within 0.2 s
            if process.poll() is not None:
                log = (tmp_path / "turnserver.log").read_text(errors="replace")[-2000:]
                pytest.fail(f"turnserver exited with {process.returncode}:\n{log}")
            if stun_answers(port):
                break
        else:
            pytest.fail("turnserver did not answer STUN within 10 s")
        yield f"turn:127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def test_relay_only_handlers_connect_through_turn(
    turn_server: str, make_handler: HandlerMaker
) -> None:
    # turn_server comes first so that it is stopped last, after the handlers closed:
    # closing deletes the TURN allocations, which needs the server.
    ice = [{"urls": turn_server, "username": TURN_USER, "credential": TURN_PASSWORD}]
    # No host_addresses override: relay-only gathering uses no host candidates at all.
    a, events_a = await make_handler(ice_servers=ice, relay_only=True, host_addresses=None)
    b, events_b = await make_handler(ice_servers=ice, relay_only=True, host_addresses=None)
    peer_b, peer_a = await events_a.connect(), await events_b.connect()
    assert a.candidate_pair(peer_b) == ("relay", "relay")
    assert b.candidate_pair(peer_a) == ("relay", "relay")
    for handler, peer in ((a, peer_b), (b, peer_a)):  # no host candidate was even offered
        pc = handler._connected[peer].pc  # private: the test inspects the SDP sent
        assert pc is not None and pc.localDescription is not None
        candidates = [
            line for line in pc.localDescription.sdp.splitlines() if line.startswith("a=candidate")
        ]
        assert candidates and all(" typ relay" in line for line in candidates)
    await a.send(peer_b, {"via": "turn", "payload": "ü" * 100_000})
    assert (await events_b.message()).data == {"via": "turn", "payload": "ü" * 100_000}
    await b.send(peer_a, ["back"])
    assert (await events_a.message()).data == ["back"]
