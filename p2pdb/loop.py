"""Run a program's main coroutine on uvloop when it is installed, else on asyncio's loop.

aiortc, aioice and the DTLS glue are pure Python doing many small socket operations; on
uvloop (the ``fast`` extra: ``pip install "p2pdb[fast]"``) the same transfer costs about a
third less CPU. The ``p2pdb`` command line and the benchmark and test peer processes run
through :func:`run`; a library user does the same in one line (see docs/webrtc.md)::

    from p2pdb.loop import run
    run(main())

``P2PDB_UVLOOP=0`` in the environment keeps asyncio's own loop (to compare, or to rule
uvloop out when chasing a problem).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["ENV_VARIABLE", "loop_name", "run", "uvloop_wanted"]

_T = TypeVar("_T")

#: ``P2PDB_UVLOOP=0`` keeps asyncio's default loop even where uvloop is installed.
ENV_VARIABLE = "P2PDB_UVLOOP"


def uvloop_wanted() -> bool:
    """Whether :func:`run` uses uvloop: it is importable and not switched off."""
    if os.environ.get(ENV_VARIABLE, "").strip().lower() in ("0", "false", "no", "off"):
        return False
    # looked up, not tried: an error of the program must not be chained to an ImportError
    return importlib.util.find_spec("uvloop") is not None


def run(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run(main)``, on uvloop when :func:`uvloop_wanted`."""
    if not uvloop_wanted():
        return asyncio.run(main)
    import uvloop

    result: _T = uvloop.run(main)
    return result


def loop_name() -> str:
    """``"uvloop"`` or ``"asyncio"``: the running loop's kind (call it inside :func:`run`)."""
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
