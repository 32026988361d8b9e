"""The websocket plugin is a second transport on the core's wire: it needs no WebRTC."""

from __future__ import annotations

import subprocess
import sys


def test_the_plugin_loads_neither_aiortc_nor_av() -> None:
    code = (
        "import sys, p2pdb.plugins.replication_websocket\n"
        "loaded = [m for m in ('aiortc', 'aioice', 'av', 'p2pdb.plugins.replication_webrtc')"
        " if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert run.stdout.strip() == ""
