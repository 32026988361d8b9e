"""Collection schemas: RxDB-style JSON Schema, checked once and compiled for fast validation.

A schema is a JSON Schema (draft 7) object with RxDB's extra keys: ``version``,
``primaryKey``, ``indexes`` and ``encrypted``. Documents are validated with a compiled
validator (fastjsonschema, ~50x faster than interpreting the schema), after an even cheaper
pre-check of the common keywords (``schema_quick``); only when fastjsonschema rejects a
document does ``jsonschema`` run, to produce its precise error message. A test keeps the two
in agreement.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

import fastjsonschema
import jsonschema
import orjson

from .errors import SchemaError, ValidationError
from .primary_key import CompositeKey, parse_composite_key
from .schema_quick import compile_quick
from .values import check_json_values

__all__ = ["RESERVED_FIELDS", "Schema"]

#: Fields p2pdb keeps beside the user's data; documents may not set them.
RESERVED_FIELDS = frozenset({"_deleted", "_rev", "_meta", "_attachments"})

_PATH_SEGMENT = re.compile(r"^[A-Za-z_$][A-Za-z0-9_$\-]*$")
# jsonschema words these with property names only, never values: safe above an encrypted field
_NAMES_ONLY = frozenset({"required", "additionalProperties", "dependentRequired"})
_RULE_CHARS = 120
_NOT_FOR_VALIDATION = ("version", "primaryKey", "indexes", "encrypted", "keyCompression")


class Schema:
    """A checked collection schema.

    ``Schema(raw)`` raises :class:`~p2pdb.errors.SchemaError` when the schema is unusable:
    not a JSON Schema object, no string primary key with a ``maxLength``, indexes or
    encrypted fields naming unknown properties, properties starting with an underscore.
    ``primaryKey`` may also be a composite key, ``{"key", "fields", "separator"}`` (see
    :mod:`p2pdb.primary_key`): :attr:`primary_key` is then the key field and
    :attr:`composite` the rest.
    """

    def __init__(self, raw: Mapping[str, Any]) -> None:
        if not isinstance(raw, Mapping):
            raise SchemaError("A schema must be a dict.", code="SCHEMA_NOT_OBJECT")
        try:  # a NaN or a datetime in a schema would otherwise become null or a string
            check_json_values(raw)
        except ValidationError as exc:
            raise SchemaError(
                f"The schema must hold only JSON values: {exc.message}",
                code="SCHEMA_INVALID_JSON_SCHEMA",
                field=exc.parameters.get("field"),
            ) from exc
        self.raw: dict[str, Any] = orjson.loads(orjson.dumps(raw))
        self.version: int = self._check_version()
        #: The composite primary key, or ``None`` when ``primaryKey`` names one field.
        self.composite: CompositeKey | None = None
        self.primary_key: str = self._check_primary_key()
        self.indexes: tuple[tuple[str, ...], ...] = self._check_indexes()
        self.encrypted: tuple[str, ...] = self._check_encrypted()
        self._encrypted_parts = tuple(tuple(p.split(".")) for p in self.encrypted)
        self.field_types: dict[str, str] = {}
        _collect_types(self.raw, "", self.field_types)
        self.hash: str = hashlib.sha256(
            orjson.dumps(self.raw, option=orjson.OPT_SORT_KEYS)
        ).hexdigest()
        plain = {k: v for k, v in self.raw.items() if k not in _NOT_FOR_VALIDATION}
        plain.setdefault("$schema", "http://json-schema.org/draft-07/schema#")
        try:
            jsonschema.Draft7Validator.check_schema(plain)
            self._fast: Callable[[Any], Any] = fastjsonschema.compile(plain, use_formats=False)
        except (jsonschema.SchemaError, fastjsonschema.JsonSchemaDefinitionException) as exc:
            raise SchemaError(
                f"The schema is not valid JSON Schema: {getattr(exc, 'message', exc)}",
                code="SCHEMA_INVALID_JSON_SCHEMA",
            ) from exc
        self._slow = jsonschema.Draft7Validator(plain)
        #: A stricter, cheaper pre-check of the common keywords (None: the schema uses others)
        self._quick = compile_quick(plain)

    # -- checks run once -------------------------------------------------------------------

    def _check_version(self) -> int:
        if self.raw.get("type") != "object" or not isinstance(self.raw.get("properties"), dict):
            raise SchemaError(
                'A collection schema needs "type": "object" and a "properties" dict.',
                code="SCHEMA_NOT_OBJECT",
            )
        version = self.raw.get("version", 0)
        if type(version) is not int or version < 0:
            raise SchemaError(
                f'"version" must be an integer >= 0, got {version!r}.', code="SCHEMA_BAD_VERSION"
            )
        for name in self.raw["properties"]:
            if name.startswith("_"):
                raise SchemaError(
                    f"Property {name!r} starts with an underscore; those names are reserved.",
                    code="SCHEMA_RESERVED_PROPERTY",
                    field=name,
                )
        return version

    def _check_primary_key(self) -> str:
        key = self.raw.get("primaryKey")
        if isinstance(key, dict):
            self.composite = parse_composite_key(key, self.raw)
            key = self.composite.key
        if not isinstance(key, str):
            raise SchemaError(
                '"primaryKey" must name a top-level string property, or be a composite key '
                '{"key": ..., "fields": [...], "separator": ...}.',
                code="SCHEMA_PRIMARY_KEY",
            )
        prop = self.raw["properties"].get(key)
        if not isinstance(prop, dict) or prop.get("type") != "string":
            raise SchemaError(
                f'The primary key {key!r} must be a property with "type": "string".',
                code="SCHEMA_PRIMARY_KEY",
                field=key,
            )
        if type(prop.get("maxLength")) is not int:
            raise SchemaError(
                f'The primary key {key!r} needs a "maxLength" (an integer), as in RxDB.',
                code="SCHEMA_PRIMARY_KEY",
                field=key,
            )
        required = self.raw.setdefault("required", [])
        if not isinstance(required, list):
            raise SchemaError('"required" must be a list.', code="SCHEMA_INVALID_JSON_SCHEMA")
        if key not in required:
            required.append(key)  # RxDB makes the primary key required the same way
        return key

    def _check_indexes(self) -> tuple[tuple[str, ...], ...]:
        raw = self.raw.get("indexes", [])
        if not isinstance(raw, list):
            raise SchemaError('"indexes" must be a list.', code="SCHEMA_BAD_INDEX")
        indexes = []
        for entry in raw:
            fields = (entry,) if isinstance(entry, str) else entry
            if not isinstance(fields, list | tuple) or not fields:
                raise SchemaError(
                    f"An index is a field name or a list of names, got {entry!r}.",
                    code="SCHEMA_BAD_INDEX",
                )
            for field in fields:
                self._check_path(field, "SCHEMA_BAD_INDEX", "indexes")
            indexes.append(tuple(fields))
        return tuple(indexes)

    def _check_encrypted(self) -> tuple[str, ...]:
        raw = self.raw.get("encrypted", [])
        if not isinstance(raw, list):
            raise SchemaError(
                '"encrypted" must be a list of field paths.', code="SCHEMA_BAD_ENCRYPTED"
            )
        key_fields = self.composite.fields if self.composite is not None else ()
        for path in raw:
            self._check_path(path, "SCHEMA_BAD_ENCRYPTED", "encrypted")
            if path.split(".")[0] == self.primary_key:
                raise SchemaError(
                    f"The primary key {path!r} cannot be encrypted: it must be readable to "
                    "find documents.",
                    code="SCHEMA_ENCRYPTED_PRIMARY_KEY",
                    field=path,
                )
            for field in key_fields:
                if _overlaps(field, path):
                    raise SchemaError(
                        f"The field {field!r} of the composite primary key cannot be "
                        f"encrypted ({path!r} is): the key, stored in clear, is made of it.",
                        code="SCHEMA_ENCRYPTED_PRIMARY_KEY",
                        field=path,
                    )
        for i, path in enumerate(raw):
            for j, other in enumerate(raw):
                if i != j and (other == path or other.startswith(path + ".")):
                    raise SchemaError(
                        f"encrypted: {other!r} is listed twice or lies inside {path!r}, "
                        "which is encrypted whole; list it once.",
                        code="SCHEMA_BAD_ENCRYPTED",
                        field=other,
                    )
            for fields in self.indexes:
                for field in fields:
                    if _overlaps(field, path):
                        raise SchemaError(
                            f"The index on {field!r} covers the encrypted field {path!r}: an "
                            "index would sort ciphertext (useless) and could reveal the order "
                            "of the values. Remove it from indexes, or do not encrypt it.",
                            code="SCHEMA_ENCRYPTED_INDEX",
                            field=field,
                        )
        return tuple(raw)

    def _check_path(self, path: object, code: str, where: str) -> None:
        if not isinstance(path, str) or not all(_PATH_SEGMENT.match(p) for p in path.split(".")):
            raise SchemaError(
                f"{where}: {path!r} is not a dotted path of plain property names.",
                code=code,
            )
        node: Any = self.raw
        for part in path.split("."):
            props = node.get("properties") if isinstance(node, dict) else None
            if not isinstance(props, dict) or part not in props:
                raise SchemaError(
                    f"{where}: {path!r} is not a property declared in the schema.",
                    code=code,
                    field=path,
                )
            node = props[part]

    # -- per document ------------------------------------------------------------------

    def validate(self, doc: Mapping[str, Any]) -> None:
        """Raise :class:`~p2pdb.errors.ValidationError` if ``doc`` breaks the schema."""
        quick = self._quick
        if quick is not None and quick(doc):
            return  # valid for sure; otherwise the validators below decide
        try:
            self._fast(doc)
            return
        except fastjsonschema.JsonSchemaValueException:
            pass
        error = jsonschema.exceptions.best_match(self._slow.iter_errors(doc))
        if error is None:  # the compiled validator was stricter than jsonschema: trust jsonschema
            return
        path, wording = self._wording(tuple(str(p) for p in error.absolute_path), error)
        raise ValidationError(
            f"Document {doc.get(self.primary_key)!r} does not match the schema at {path}: "
            f"{wording}. Fix the value or the schema.",
            code="DOCUMENT_INVALID",
            field=path,
            rule=str(error.validator),
            document_id=doc.get(self.primary_key),
        )

    def _wording(
        self, parts: tuple[str, ...], error: jsonschema.ValidationError
    ) -> tuple[str, str]:
        """The path and message of an error: jsonschema's message, unless it could quote an
        encrypted value; then only the rule it breaks (the schema is stored in clear
        anyway, the value never is), at the encrypted field's path (keys and indexes
        inside an encrypted value are part of it)."""
        inside = next((e for e in self._encrypted_parts if parts[: len(e)] == e), None)
        above = any(e[: len(parts)] == parts for e in self._encrypted_parts)
        if inside is None and (not above or error.validator in _NAMES_ONLY):
            return ".".join(parts) or "(document)", str(error.message)
        rule = orjson.dumps(error.validator_value).decode()
        if len(rule) > _RULE_CHARS:
            rule = rule[: _RULE_CHARS - 3] + "..."
        path = ".".join(inside or parts) or "(document)"
        return path, f"<encrypted value> breaks the rule {error.validator!r}: {rule}"

    def fill_primary_key(self, doc: dict[str, Any]) -> str:
        """The primary key value of ``doc`` (a copy the caller owns): with a composite key,
        composed from its fields and set in ``doc`` (a key already given must equal it);
        either way checked to be a non-empty string. Raises ValidationError."""
        if self.composite is not None:
            self.composite.fill(doc)
        return self.primary_value(doc)

    def check_key_kept(self, data: object, doc_id: str) -> None:
        """With a composite key, raise ``DOCUMENT_PRIMARY_KEY_CHANGED`` if ``data``, the next
        state of ``doc_id``, changes a field of the key (a plain key is compared by the
        caller after validation)."""
        if self.composite is not None:
            self.composite.check_kept(data, doc_id)

    def primary_value(self, doc: Mapping[str, Any]) -> str:
        """The document's primary key value, checked to be a non-empty string."""
        value = doc.get(self.primary_key) if isinstance(doc, Mapping) else None
        if not isinstance(value, str) or not value:
            raise ValidationError(
                f"Every document needs a non-empty string primary key {self.primary_key!r}; "
                f"got {value!r}.",
                code="DOCUMENT_PRIMARY_KEY",
                field=self.primary_key,
            )
        return value


def _collect_types(node: Mapping[str, Any], prefix: str, out: dict[str, str]) -> None:
    """Record, per dotted path, the one JSON type a property declares (queries use it)."""
    for name, prop in (node.get("properties") or {}).items():
        if not isinstance(prop, dict):
            continue
        path = f"{prefix}{name}"
        declared = prop.get("type")
        if isinstance(declared, str):
            out[path] = declared
        if declared == "object":
            _collect_types(prop, path + ".", out)


def _overlaps(a: str, b: str) -> bool:
    """True if one dotted path is the other or lies inside it."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")
