"""Schemas shared by the tests."""

from __future__ import annotations

from typing import Any

TODO_SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 100},
        "text": {"type": "string"},
        "done": {"type": "boolean"},
        "n": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}},
        "meta": {"type": "object", "properties": {"owner": {"type": "string"}}},
    },
    "required": ["id", "text"],
    "indexes": ["n", ["done", "n"]],
}


#: A small schema for replication between peers.
PEER_SCHEMA: dict[str, Any] = {
    "version": 0,
    "primaryKey": "id",
    "type": "object",
    "properties": {
        "id": {"type": "string", "maxLength": 64},
        "text": {"type": "string"},
        "n": {"type": "integer"},
    },
    "required": ["id", "text"],
}
