"""Random tokens: database tokens, request-id prefixes, channel labels."""

from __future__ import annotations

import secrets
import string

__all__ = ["random_token"]


def random_token(length: int = 10) -> str:
    """``length`` random lowercase ASCII letters (RxDB's ``randomToken``), from
    :mod:`secrets`: unguessable, and safe in any id, label or URL."""
    return "".join(secrets.choice(string.ascii_lowercase) for _ in range(length))
