"""The base64 of encrypted values: pybase64 when installed, binascii otherwise.

Both read the same stored text (``p2e1:`` + standard base64), so a file written with one
reads with the other, and both refuse the same malformed text with ``ENCRYPTION_TAMPERED``.
The binascii side runs in a child interpreter where ``import pybase64`` fails; the checks
it runs are the functions of this module, called by name.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from p2pdb.errors import EncryptionError
from p2pdb.plugins.encryption import (
    BASE64,
    PREFIX,
    EncryptedFieldsCodec,
    FieldCipher,
    associated_data,
)

KEY = bytes(range(32))
# Written by p2pdb before pybase64 was used (binascii, commit a3e4d8e), under KEY
GOLDEN = [
    (
        "n1",
        "p2e1:AVc62Oeem9KYIkqgv54BNEwpsaPfBE1OB4Sos732QXNKyyA/EJrQXWUszjgBRWMl07ZfQErdyjyo5vVCR"
        "SrUgXYBVRot1C2bqbvX8zmz/BItvYc=",
        {"text": "written before pybase64", "n": [1, 2.5, None]},
    ),
    (
        "n2",
        "p2e1:AVc62BLQHySz116p+7rz6lPyQMux7VOi3TJdn4iXVNhXGTKOB637omo8CL9lvju2ynjzNOG8IWvY41l1D"
        "AwLmDhdQHh53DpSVY2oF7IjpOmWWgUJpnsjr4euOppQLjTWUOhS/tGhBz8Z28/Nkl8demNW3YFr3f2ikJ4qCLN0"
        "lGAbFo6dHpg=",
        "x" * 100,
    ),
]


def codec() -> EncryptedFieldsCodec:
    return EncryptedFieldsCodec(FieldCipher(KEY), ["body"])


def read(text: object, doc_id: str = "n1") -> Any:
    return codec().decode("notes", doc_id, {"id": doc_id, "body": text})["body"]


def malformed(good: str) -> dict[str, tuple[str, str]]:
    """Damaged copies of the valid stored value ``good`` (its base64 ends with one "="),
    each with the reason the error message must give."""
    b64 = good[len(PREFIX) :]
    assert b64.endswith("=") and not b64.endswith("==") and len(b64) % 4 == 0
    base64_error = "not valid base64"
    return {
        "a character outside the alphabet": (PREFIX + b64[:10] + "*" + b64[11:], base64_error),
        "a space inside": (PREFIX + b64[:10] + " " + b64[11:], base64_error),
        "a newline inside": (PREFIX + b64[:40] + "\n" + b64[40:], base64_error),
        "a trailing newline": (PREFIX + b64 + "\n", base64_error),
        "non-ASCII": (PREFIX + b64[:10] + "é" + b64[11:], base64_error),
        "the URL-safe alphabet": (PREFIX + "-_" + b64[2:], base64_error),
        "padding missing": (PREFIX + b64[:-1], base64_error),
        "padding in the middle": (PREFIX + b64[:6] + "==" + b64[8:], base64_error),
        "leading padding": (PREFIX + "=" + b64[1:], base64_error),
        "one character cut": (PREFIX + b64[1:], base64_error),
        "truncated to whole groups": (PREFIX + b64[:-8], "tag does not match"),
        "truncated below a tag": (PREFIX + b64[:40], "too short"),
        "empty": (PREFIX, "too short"),
        "no prefix": (b64, "not an encrypted value"),
        "another prefix": ("p2e2:" + b64, "not an encrypted value"),
    }


def check_golden() -> None:
    """Values written before pybase64 read back, and each new value reads back."""
    for doc_id, text, value in GOLDEN:
        assert read(text, doc_id) == value
        fresh = codec().encode("notes", doc_id, {"id": doc_id, "body": value})["body"]
        assert fresh.startswith(PREFIX) and fresh != text
        assert read(fresh, doc_id) == value


def check_malformed() -> None:
    """Every malformed value raises ENCRYPTION_TAMPERED with its reason."""
    good = GOLDEN[1][1]
    assert read(good, "n2") == "x" * 100
    for name, (text, reason) in malformed(good).items():
        with pytest.raises(EncryptionError) as info:
            read(text, "n2")
        assert info.value.code == "ENCRYPTION_TAMPERED", name
        assert reason in info.value.message, (name, info.value.message)
        assert info.value.parameters == {
            "collection": "notes",
            "document_id": "n2",
            "field": "body",
        }


def check_cross(texts: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Read the values another implementation wrote; write values for it to read."""
    for doc_id, text, value in texts["values"]:
        assert read(text, doc_id) == value
    values = [{"n": i, "s": "é" * i} for i in range(40)]  # every base64 length mod 4
    ids = [f"x{i}" for i in range(40)]
    cipher = FieldCipher(KEY)
    return {
        "values": [
            [doc_id, cipher.encrypt(value, associated_data("notes", "body", doc_id)), value]
            for doc_id, value in zip(ids, values, strict=True)
        ]
    }


def in_child_without_pybase64(check: str, payload: Any = None) -> Any:
    """Run ``check`` of this module in a fresh interpreter where pybase64 cannot be imported."""
    code = (
        "import json, sys; sys.modules['pybase64'] = None; "
        f"sys.path.insert(0, {str(Path(__file__).parent)!r}); "
        "import test_encryption_base64 as t; "
        "from p2pdb.plugins.encryption import BASE64; assert BASE64 == 'binascii', BASE64; "
        f"out = t.{check}(*json.loads(sys.stdin.read())); print(json.dumps(out))"
    )
    root = str(Path(__file__).parent.parent)
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps([] if payload is None else [payload]),
        capture_output=True,
        text=True,
        cwd=root,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_pybase64_is_used_when_installed() -> None:
    pytest.importorskip("pybase64")
    assert BASE64 == "pybase64"


def test_values_written_before_read_back() -> None:
    check_golden()


def test_malformed_values_are_refused() -> None:
    check_malformed()


def test_without_pybase64_the_same_checks_pass() -> None:
    assert in_child_without_pybase64("check_golden") is None
    assert in_child_without_pybase64("check_malformed") is None


def test_each_implementation_reads_the_other() -> None:
    ours = check_cross({"values": []})
    theirs = in_child_without_pybase64("check_cross", ours)
    assert len(theirs["values"]) == 40
    check_cross(theirs)
