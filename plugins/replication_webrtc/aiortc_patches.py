"""What the contained patches of aiortc (:mod:`.sctp_sack`, :mod:`.sctp_flush`) share: each
applies only to aiortc versions it was read and tested against, and an environment variable
switches it off for the process."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

import aiortc
from aiortc.rtcsctptransport import RTCSctpTransport

__all__ = ["checked", "may_patch", "switched_on"]

_logged: set[str] = set()  # patches whose "not a checked version" line was logged


def switched_on(variable: str) -> bool:
    """``False`` when the environment variable is ``0``/``false``/``no``/``off``."""
    return os.environ.get(variable, "").strip().lower() not in ("0", "false", "no", "off")


def checked(versions: Iterable[str], *methods: str) -> bool:
    """Whether the installed aiortc is among ``versions`` and its ``RTCSctpTransport`` has
    the ``methods`` a patch replaces or calls."""
    return aiortc.__version__ in versions and all(
        hasattr(RTCSctpTransport, name) for name in methods
    )


def may_patch(
    variable: str,
    versions: Iterable[str],
    methods: tuple[str, ...],
    what: str,
    logger: logging.Logger,
) -> bool:
    """Whether the patch ``what`` may be applied: switched on, and aiortc a checked version
    (if not, that is logged once on ``logger``, at debug)."""
    if not switched_on(variable):
        return False
    if checked(versions, *methods):
        return True
    if what not in _logged:
        _logged.add(what)
        logger.debug(
            "aiortc %s is not among the versions checked for %s (%s); left as it is",
            aiortc.__version__,
            what,
            ", ".join(sorted(versions)),
        )
    return False
