"""Debian packages that some tests need (coturn, redis-server, chromium), installed by the test
session.

:func:`find_or_install` finds a binary, or installs its package with apt-get when the session
runs as root on a machine that has apt-get (tests/conftest.py calls it once, before any
test's timeout starts). Otherwise the tests that need it fail, never skip, with one message
that says how to install it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

APT_TIMEOUT = 600.0  # seconds for each apt-get step


def apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["apt-get", "-qq", *args],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=APT_TIMEOUT,
        check=False,
    )


@functools.cache
def find_or_install(binary: str, package: str, hint: str) -> tuple[str | None, str]:
    """``(path, "")`` of ``binary``, installing ``package`` with apt-get when running as
    root; ``(None, why)`` when it is missing and cannot be installed (``hint`` says how).
    Runs once a session per binary (apt-get holds its own lock against other sessions)."""
    found = shutil.which(binary)
    if found is not None:
        return found, ""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, hint + "."
    install = ("install", "-y", "--no-install-recommends", package)
    try:
        result = apt_get(*install)
        if result.returncode != 0:  # the package lists may be missing or old
            apt_get("update")
            result = apt_get(*install)
    except subprocess.TimeoutExpired:
        return None, f"{hint}; `apt-get install {package}` took over {APT_TIMEOUT:.0f} s."
    found = shutil.which(binary)
    if found is None:
        tail = (result.stderr or result.stdout).strip()[-1500:]
        return None, f"{hint}; `apt-get install {package}` failed:\n{tail}"
    return found, ""


REDIS_HINT = (
    "`redis-server` is not installed, so the signaling tests on Redis cannot run; install it "
    "with `sudo apt-get install redis-server` (Debian, Ubuntu) or your system's Redis package "
    "(as root with apt-get, the test session installs it itself)"
)


def find_or_install_redis() -> tuple[str | None, str]:
    """``(path, "")`` of ``redis-server`` (installing Debian's package when it can), or
    ``(None, why)``."""
    return find_or_install("redis-server", "redis-server", REDIS_HINT)
