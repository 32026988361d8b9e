"""RxDB's master election for a pair of peers, over their two database tokens."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

__all__ = ["HashFunction", "is_master", "sha256_hex"]

#: The election hash: ``str -> str``; it must match the other peers' (RxDB's ``hashFunction``).
HashFunction = Callable[[str], str]


def sha256_hex(text: str) -> str:
    """RxDB's default hash: SHA-256 of the UTF-8 text, as lowercase hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def is_master(own_token: str, other_token: str, hash_function: HashFunction = sha256_hex) -> bool:
    """RxDB's election: we lead the pair when ``hash(own|other) > hash(other|own)``."""
    return hash_function(f"{own_token}|{other_token}") > hash_function(
        f"{other_token}|{own_token}"
    )
