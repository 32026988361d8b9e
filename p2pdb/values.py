"""What a document may hold: JSON values that p2pdb stores and queries exactly.

Nothing is changed silently: a value is stored exactly as given (a tuple becomes a list, a
subclass of dict or list a dict or list), or the document is refused with a
:class:`~p2pdb.errors.ValidationError` naming the field (see ``docs/errors.md``).
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Final

import orjson

from .errors import ValidationError

__all__ = ["MAX_DEPTH", "brief", "check_json_values", "is_text", "json_copy", "nested_deeper"]

#: How deep objects and lists may nest in a selector: one level more than in a stored
#: document (orjson writes 254), so every storable value can be queried, and shallow enough
#: that parsing and evaluating a selector (which recurse) stay far from the recursion limit.
MAX_DEPTH: Final = 255
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_SCALARS: Final = (str, int, float, bool, type(None))
_isfinite: Final = math.isfinite
_BRIEF: Final = reprlib.Repr()
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxother, _BRIEF.maxlong = 4, 60, 60, 40


def brief(value: object) -> str:
    """A short ``repr`` of ``value`` for an error message: bounded in length and depth, so
    that a huge or deeply nested argument never makes the message itself fail (a plain
    ``repr`` of a list nested 5,000 deep raises RecursionError) or grow without bound."""
    try:
        return _BRIEF.repr(value)
    except Exception:  # a user object whose __repr__ fails: its type is enough
        return f"<{type(value).__name__}>"


def nested_deeper(value: object, limit: int) -> bool:
    """True if dicts, lists and tuples nest in ``value`` more than ``limit`` levels deep.
    Walks with an explicit stack: it must not itself hit the recursion limit."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Iterable[object] = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def is_text(value: object) -> bool:
    """True for an exact ``str`` that UTF-8 can encode (no lone surrogate): the only strings
    SQLite can store or compare. A lone surrogate (``"\\ud800"``) is not Unicode text."""
    if type(value) is not str:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_json_values(data: object, *, opaque: Collection[str] = ()) -> None:
    """Raise :class:`~p2pdb.errors.ValidationError` unless ``data`` is stored exactly as given.

    Accepted: ``dict`` (string keys), ``list``, ``tuple`` (stored as a list), ``str``,
    ``int``, finite ``float``, ``bool`` and ``None``, exactly those types (subclasses of
    ``dict`` and ``list`` too). Refused with ``DOCUMENT_NOT_JSON``: ``NaN`` and infinities,
    every other type (``datetime``, ``date``, ``UUID``, ``Decimal``, enum members, numpy
    scalars, dataclasses, sets, bytes, subclasses of ``str``/``int``/``float``), non-string
    keys, strings holding lone surrogates. Refused with ``DOCUMENT_UNSUPPORTED_VALUE``:
    integers outside the signed 64-bit range and strings (or keys) holding U+0000, which
    SQLite's JSON functions cannot query exactly; ``opaque`` lists dotted paths exempt from
    this U+0000 rule (a collection's encrypted fields: stored as ciphertext, never queried).
    ``parameters["field"]`` names the path (``"tags.2"``, ``"meta.when"``; ``"(document)"``
    for the document itself).
    """
    try:
        _check(data, "", frozenset(opaque), False)
    except RecursionError:
        raise ValidationError(
            "The document is nested too deeply to be stored.", code="DOCUMENT_NOT_JSON"
        ) from None


def json_copy(data: object, *, opaque: Collection[str] = ()) -> dict[str, Any]:
    """A deep copy of the document ``data`` holding exactly its values; or the
    :class:`~p2pdb.errors.ValidationError` of :func:`check_json_values` (the same rules).

    The common case (exact types, no U+0000, no lone surrogate, not deeply nested) is one
    walk that checks and copies at once; only a document that fails it (or holds a tuple, a
    dict subclass, a U+0000 in an encrypted field) takes the slower walk that names the
    field and the reason, then a copy through JSON.
    """
    copy = _copy_dict(data, 0) if type(data) is dict else _ODD
    if copy is not _ODD:
        return copy  # type: ignore[return-value]
    check_json_values(data, opaque=opaque)
    try:
        slow: dict[str, Any] = orjson.loads(orjson.dumps(data))
    except (TypeError, orjson.JSONEncodeError) as exc:  # nested deeper than orjson goes
        raise ValidationError(
            f"A document must hold only JSON values: {exc}.", code="DOCUMENT_NOT_JSON"
        ) from exc
    return slow


#: What the fast copy returns when a value needs the slow walk (any oddity, even one that
#: is accepted, such as a tuple): a marker, since ``None`` is a JSON value.
_ODD: Final = object()
#: The fast copy leaves deeper documents to the slow walk, which words the errors of
#: nesting (orjson writes 254 levels; this is well inside it).
_FAST_DEPTH: Final = 200


def _text_ok(text: str) -> bool:
    """True if ``text`` has no U+0000 and no lone surrogate (an ASCII one, the common
    case, skips the encode)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# _copy_dict and _copy_list repeat the scalar dispatch inline on purpose: a call per value
# is most of the cost of a walk (this runs on every document written).


def _copy_dict(value: dict[Any, Any], depth: int) -> object:
    out: dict[str, Any] = {}
    for key, item in value.items():
        # _text_ok inline (a call per string is a good part of the walk)
        if type(key) is not str or "\x00" in key or not (key.isascii() or _text_ok(key)):
            return _ODD
        kind = type(item)
        if kind is str:
            if "\x00" in item or not (item.isascii() or _text_ok(item)):
                return _ODD
        elif kind is int:
            if not _INT64_MIN <= item <= _INT64_MAX:
                return _ODD
        elif kind is float:
            if not _isfinite(item):
                return _ODD
        elif kind is bool or item is None:
            pass
        elif depth >= _FAST_DEPTH:
            return _ODD
        elif kind is dict:
            item = _copy_dict(item, depth + 1)
            if item is _ODD:
                return _ODD
        elif kind is list:
            item = _copy_list(item, depth + 1)
            if item is _ODD:
                return _ODD
        else:
            return _ODD
        out[key] = item
    return out


def _copy_list(value: list[Any], depth: int) -> object:
    out: list[Any] = []
    append = out.append
    for item in value:
        kind = type(item)
        if kind is str:
            if "\x00" in item or not (item.isascii() or _text_ok(item)):
                return _ODD
        elif kind is int:
            if not _INT64_MIN <= item <= _INT64_MAX:
                return _ODD
        elif kind is float:
            if not _isfinite(item):
                return _ODD
        elif kind is bool or item is None:
            pass
        elif depth >= _FAST_DEPTH:
            return _ODD
        elif kind is dict:
            item = _copy_dict(item, depth + 1)
            if item is _ODD:
                return _ODD
        elif kind is list:
            item = _copy_list(item, depth + 1)
            if item is _ODD:
                return _ODD
        else:
            return _ODD
        append(item)
    return out


def _check(value: object, path: str, opaque: frozenset[str], nul_ok: bool) -> None:
    exact = type(value) in _SCALARS  # subclasses (enum members, numpy scalars) are refused
    if isinstance(value, str) and exact:
        _check_str(value, path, "a string", nul_ok)
    elif isinstance(value, bool) and exact or value is None:
        pass
    elif isinstance(value, int) and exact:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _unsupported(
                path,
                "an integer outside the signed 64-bit range (-2**63 .. 2**63-1)",
                "store it as a string",
            )
    elif isinstance(value, float) and exact:
        if not math.isfinite(value):
            raise _not_json(path, f"{value!r} (NaN and infinities are not JSON)")
    elif isinstance(value, dict):
        for key, item in value.items():
            if type(key) is not str:
                raise _not_json(path, f"the key {key!r} (keys must be strings)")
            _check_str(key, path, "a key", nul_ok)
            inner = f"{path}.{key}" if path else key
            _check(item, inner, opaque, nul_ok or inner in opaque)
    elif isinstance(value, list | tuple) and (type(value) is tuple or not isinstance(value, tuple)):
        for index, item in enumerate(value):
            _check(item, f"{path}.{index}" if path else str(index), opaque, nul_ok)
    else:
        shown = "" if nul_ok else f" ({value!r:.60})"  # nul_ok: inside an encrypted field
        raise _not_json(path, f"a value of type {type(value).__name__}{shown}")


def _check_str(text: str, path: str, what: str, nul_ok: bool) -> None:
    if not nul_ok and "\x00" in text:
        raise _unsupported(
            path, f"{what} with U+0000 ({text!r:.60})", "remove or replace the U+0000"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        shown = "" if nul_ok else f" ({text!r:.60})"  # nul_ok: inside an encrypted field
        raise _not_json(path, f"{what} with a lone surrogate{shown}") from None


def _not_json(path: str, what: str) -> ValidationError:
    return ValidationError(
        f"{_where(path)} holds {what}. A document holds only JSON values: str, int, finite "
        "float, bool, None, list (or tuple) and dict with string keys; convert the value "
        "(for example str(uuid), when.isoformat(), float(x)) or leave the field out.",
        code="DOCUMENT_NOT_JSON",
        field=path or "(document)",
    )


def _unsupported(path: str, what: str, fix: str) -> ValidationError:
    return ValidationError(
        f"{_where(path)} holds {what}, which p2pdb cannot store and query exactly: {fix}.",
        code="DOCUMENT_UNSUPPORTED_VALUE",
        field=path or "(document)",
    )


def _where(path: str) -> str:
    return f"The field {path!r}" if path else "The document"
