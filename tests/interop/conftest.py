"""Fixtures for the RxDB interop tests: real RxDB 17.6 peers in Node (``rxdb_peer.mjs``),
RxDB's own signaling server (``signaling.mjs``) or p2pdb's, and p2pdb peers in this process.

Before the first test runs, the session brings what these tests need (``node_setup.py``):
a Node.js >= 20 (the system's, or the one the dev extra installs from PyPI) and ``npm ci`` in
tests/interop when node_modules is missing or stale. If that fails, every test here fails
(never skips) with one message saying what to do.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import orjson
import pytest
from node_setup import NodeSetupError, ensure_node, ensure_node_modules, needs_install
from rxdb_harness import HERE, InteropSetupError, Stack, WireLog, node_executable

#: Why Node or the packages could not be made ready (set by pytest_collection_finish).
SETUP_PROBLEM: list[str] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    """Install Node packages before the tests run, so no test's timeout covers ``npm ci``."""
    if session.config.option.collectonly:
        return
    if not any(HERE in Path(str(item.path)).parents for item in session.items):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    try:
        tools = ensure_node()
        if reporter is not None and needs_install():
            reporter.write_line("interop: running `npm ci` in tests/interop (about a minute)")
        ensure_node_modules(tools)
    except NodeSetupError as error:
        SETUP_PROBLEM.append(str(error))


@pytest.fixture(scope="session")
def node() -> str:
    """The ``node`` binary; fails every test that needs it when Node or npm ci is missing."""
    if SETUP_PROBLEM:
        pytest.fail(SETUP_PROBLEM[0], pytrace=False)
    try:
        return node_executable()
    except InteropSetupError as error:
        problem = str(error)
    pytest.fail(problem, pytrace=False)


@pytest.fixture(autouse=True)
def _require_node(node: str) -> None:
    """Every interop test needs Node and the harness's node_modules."""


@pytest.fixture(scope="session")
def rxdb_signaling_url(node: str) -> Iterator[str]:
    """RxDB's ``startSignalingServerSimplePeer`` on 127.0.0.1, shared by the session."""
    process = subprocess.Popen(
        # --exit-with-stdin: it stops by itself if this process dies without stopping it
        [node, str(HERE / "signaling.mjs"), "0", "127.0.0.1", "--exit-with-stdin"],
        cwd=HERE,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        ready, _, _ = select.select([process.stdout], [], [], 30.0)
        line = process.stdout.readline() if ready else b""
        if not line:
            pytest.fail("node signaling.mjs did not print its ready line within 30 s")
        yield str(orjson.loads(line)["url"])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)  # this child only, by its PID
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()
        assert process.stdin is not None
        process.stdin.close()


@pytest.fixture
async def stack(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Stack]:
    # The shared RxDB signaling server starts only for tests that ask for it.
    s = Stack(tmp_path, lambda: request.getfixturevalue("rxdb_signaling_url"))
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> WireLog:
    """A log of every replication message the p2pdb peers of this test sent and received."""
    log = WireLog()
    log.install(monkeypatch.setattr)
    return log
