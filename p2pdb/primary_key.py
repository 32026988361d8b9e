"""Composite primary keys, as RxDB's ``primaryKey: {"key", "fields", "separator"}``.

The key field (a top-level string property) holds the values of ``fields`` joined with
``separator``, computed the way RxDB's ``getComposedPrimaryKeyOfDocumentData`` does (numbers
written as JavaScript writes them), so a p2pdb peer and an RxDB peer agree on every key.
Where RxDB is silent, p2pdb refuses what would make two documents share a key: a field
value containing the separator, an empty separator, an integer JavaScript cannot hold.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, NoReturn

from .errors import SchemaError, ValidationError

__all__ = ["CompositeKey", "js_number_string", "parse_composite_key"]

_PATH_SEGMENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$\-]*$")
_PART_TYPES = ("string", "integer", "number")  # RxDB's rule for the fields of a key (SC32)
_MAX_SAFE_INTEGER = 2**53 - 1  # beyond it a JavaScript peer would compose another key
_MISSING = object()


@dataclass(frozen=True)
class CompositeKey:
    """A checked composite primary key: ``key`` holds ``fields`` joined by ``separator``."""

    key: str
    fields: tuple[str, ...]
    separator: str

    def compose(self, doc: Mapping[str, Any]) -> str:
        """The key of ``doc``, from its fields. Raises
        :class:`~p2pdb.errors.ValidationError`: ``DOCUMENT_PRIMARY_KEY`` (a field is
        missing), ``DOCUMENT_PRIMARY_KEY_SEPARATOR`` (a value contains the separator),
        ``DOCUMENT_INVALID`` (a value that is not a string or a number),
        ``DOCUMENT_UNSUPPORTED_VALUE`` (an integer beyond JavaScript's 2**53 - 1)."""
        return self.separator.join(self._part(doc, path) for path in self.fields)

    def fill(self, doc: dict[str, Any]) -> str:
        """Set ``doc[key]`` to the composed key and return it; a key already given must
        equal it (``DOCUMENT_PRIMARY_KEY_MISMATCH``, where RxDB says DOC19)."""
        composed = self.compose(doc)
        if self.key in doc and doc[self.key] != composed:
            raise ValidationError(
                f"The primary key {self.key!r} is composed of {', '.join(self.fields)} "
                f"joined by {self.separator!r}: it must be {composed!r}, got "
                f"{doc[self.key]!r}. Leave it out and it is filled in; on an update, the "
                "fields of the key cannot change.",
                code="DOCUMENT_PRIMARY_KEY_MISMATCH",
                field=self.key,
                document_id=composed,
            )
        doc[self.key] = composed
        return composed

    def check_kept(self, data: object, doc_id: str) -> None:
        """Raise ``DOCUMENT_PRIMARY_KEY_CHANGED`` if ``data``, the next state of the document
        ``doc_id``, gives another key or changes a field of the key. A ``data`` whose key
        cannot be composed is left to the validation that follows (its own code)."""
        if not isinstance(data, Mapping):
            return
        given = data.get(self.key, doc_id)
        try:
            composed = self.compose(data)
        except ValidationError:
            composed = doc_id
        if given != doc_id or composed != doc_id:
            new = given if given != doc_id else composed
            raise ValidationError(
                f"The primary key cannot change (was {doc_id!r}, got {new!r}): {self.key!r} "
                "is composed of "
                f"{', '.join(self.fields)}, which cannot change either. Insert a new "
                "document and remove the old one.",
                code="DOCUMENT_PRIMARY_KEY_CHANGED",
                id=doc_id,
            )

    def _part(self, doc: Mapping[str, Any], path: str) -> str:
        value: Any = doc
        for name in path.split("."):
            value = value.get(name, _MISSING) if isinstance(value, Mapping) else _MISSING
        if value is _MISSING:
            raise ValidationError(
                f"The field {path!r} is missing: the primary key {self.key!r} is composed of "
                f"{', '.join(self.fields)}, so every document needs them all.",
                code="DOCUMENT_PRIMARY_KEY",
                field=path,
            )
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValidationError(
                f"The field {path!r} is part of the primary key {self.key!r}: it must be a "
                f"string or a number, got {type(value).__name__}.",
                code="DOCUMENT_INVALID",
                field=path,
                rule="type",
            )
        if isinstance(value, int) and abs(value) > _MAX_SAFE_INTEGER:
            raise ValidationError(
                f"The field {path!r} is part of the primary key {self.key!r}: {value} is "
                "beyond 2**53 - 1, where a JavaScript peer would compose another key.",
                code="DOCUMENT_UNSUPPORTED_VALUE",
                field=path,
            )
        text = value if isinstance(value, str) else js_number_string(value)
        if self.separator in text:
            raise ValidationError(
                f"The field {path!r} is part of the primary key {self.key!r} and its value "
                f"{text!r} contains the separator {self.separator!r}: two documents could "
                "get the same key. Choose a separator that never appears in the values.",
                code="DOCUMENT_PRIMARY_KEY_SEPARATOR",
                field=path,
            )
        return text


def js_number_string(value: int | float) -> str:
    """``value`` written as JavaScript's ``String(number)`` writes it (``2.0`` is ``"2"``,
    ``1e21`` is ``"1e+21"``, ``1e-7`` is ``"1e-7"``): what RxDB joins into a key."""
    if isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"  # -0 too
    sign = "-" if value < 0 else ""
    # repr() gives the shortest digits that round-trip, the digits JavaScript picks too
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    k = len(digits)
    n = k + int(exponent)  # the decimal point sits after n digits
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
        text = f"{mantissa}e{'+' if n - 1 >= 0 else '-'}{abs(n - 1)}"
    return sign + text


def parse_composite_key(raw: Mapping[str, Any], schema: Mapping[str, Any]) -> CompositeKey:
    """Check a ``primaryKey`` object against its schema as RxDB's dev-mode does (the key and
    every field declared, the fields of type string, integer or number), plus: exactly the
    keys ``key``, ``fields`` and ``separator``; at least one field, none of them the key;
    a non-empty separator. Raises :class:`~p2pdb.errors.SchemaError` ``SCHEMA_PRIMARY_KEY``.
    (The key field's own rules, a string with a ``maxLength``, are checked by the schema.)"""
    unknown = sorted(set(raw) - {"key", "fields", "separator"})
    if unknown:
        _refuse(
            f'"primaryKey" has unknown keys {unknown}; a composite key has "key", '
            '"fields" and "separator".'
        )
    key, fields, separator = raw.get("key"), raw.get("fields"), raw.get("separator")
    if not isinstance(key, str) or not key:
        _refuse(
            'A composite "primaryKey" needs "key": the name of the top-level string '
            "property that holds the key."
        )
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        _refuse('A composite "primaryKey" needs "fields": a non-empty list of field paths.')
    if not isinstance(separator, str) or not separator:
        _refuse(
            'A composite "primaryKey" needs "separator": a non-empty string (an empty '
            "one would let two documents share a key)."
        )
    for path in fields:
        if path == key:
            _refuse(f"The key {key!r} cannot be one of its own fields.", path)
        declared = _declared(schema, path)
        if declared is None or declared.get("type") not in _PART_TYPES:
            _refuse(
                f"primaryKey: the field {path!r} must be a declared property with "
                '"type": "string", "integer" or "number" (as in RxDB).',
                path,
            )
    return CompositeKey(key, tuple(fields), separator)


def _declared(schema: Mapping[str, Any], path: str) -> Mapping[str, Any] | None:
    """The property a dotted path declares, or ``None``."""
    node: Any = schema
    for part in path.split("."):
        props = node.get("properties") if isinstance(node, Mapping) else None
        if not _PATH_SEGMENT.match(part) or not isinstance(props, Mapping) or part not in props:
            return None
        node = props[part]
    return node if isinstance(node, Mapping) else None


def _refuse(message: str, field: str | None = None) -> NoReturn:
    raise SchemaError(message, code="SCHEMA_PRIMARY_KEY", field=field)
