"""A real TURN server (coturn's ``turnserver``) on 127.0.0.1 for tests (a plain module).

Use :func:`running_turnserver` in a fixture::

    @pytest.fixture
    def turn_server(tmp_path):
        with running_turnserver(tmp_path) as url:
            yield url

If ``turnserver`` is not installed, the session installs Debian's ``coturn`` itself when it
runs as root on a machine with ``apt-get`` (tests/conftest.py calls
:func:`find_or_install_turnserver` once, before any test's timeout starts); otherwise every
TURN test fails (never skips) with one message that says how to install it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from aioice import stun
from system_packages import find_or_install

TURN_USER, TURN_PASSWORD = "p2pdb", "secret-pass"
TURN_REALM = "p2pdb.test"


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
    return bool(stun.parse_message(data).transaction_id == request.transaction_id)


INSTALL_HINT = (
    "coturn's `turnserver` is not installed, so the TURN tests cannot run; install it "
    "with `sudo apt-get install coturn` (Debian, Ubuntu) or your system's coturn package "
    "(as root with apt-get, the test session installs it itself)"
)


def find_or_install_turnserver() -> tuple[str | None, str]:
    """``(path, "")`` of ``turnserver`` (installing coturn when it can), or ``(None, why)``."""
    return find_or_install("turnserver", "coturn", INSTALL_HINT)


def turnserver_binary() -> str:
    """The ``turnserver`` to run; fails the test with how to install it when there is none."""
    binary, problem = find_or_install_turnserver()
    if binary is None:
        pytest.fail(problem, pytrace=False)
    return binary


@contextlib.contextmanager
def running_turnserver(tmp_path: Path) -> Iterator[str]:
    """Run coturn on a free UDP port of 127.0.0.1 (long-term credentials
    ``TURN_USER``/``TURN_PASSWORD``); yield its ``turn:`` URL; stop it by its PID."""
    binary = turnserver_binary()
    port = free_udp_port()
    relay_min = 50000 + port % 10000  # a per-port relay range keeps parallel runs apart
    log_file = tmp_path / "turnserver.log"
    command = [
        binary,
        "-n",  # no configuration file
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        f"--min-port={relay_min}",
        f"--max-port={relay_min + 200}",
        f"--user={TURN_USER}:{TURN_PASSWORD}",
        f"--realm={TURN_REALM}",
        "--lt-cred-mech",
        "--no-tls",
        "--no-dtls",
        "--allow-loopback-peers",  # coturn refuses 127.x.x.x peers otherwise
        "--no-cli",
        f"--userdb={tmp_path / 'turndb'}",
        f"--pidfile={tmp_path / 'turnserver.pid'}",
        f"--log-file={log_file}",
        "--simple-log",
        "--no-stdout-log",
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):  # up to ~10 s; it usually answers within 0.2 s
            if process.poll() is not None:
                log = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
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
