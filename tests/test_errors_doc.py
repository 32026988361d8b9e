"""``docs/errors.md`` lists every error code p2pdb and its plugins raise, and nothing else.

Codes are collected from the source: ``code="..."`` arguments (every branch of a
conditional one too), ``default_code = "..."`` class attributes, code-shaped string
constants passed positionally to a call (helpers such as ``_error("QUERY_...", ...)`` or
``_report(message, "WEBRTC_...")``), and ``p2pdb.query.QUERY_ERROR_CODES``. A new code
fails this test until it is documented.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import p2pdb.errors
from p2pdb.query import QUERY_ERROR_CODES
from p2pdb.streams import StreamOverflowError

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "errors.md"

CODE_SHAPE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)*")
PATTERNS = (
    re.compile(r"""\bcode\s*=\s*["']([A-Z][A-Z0-9_]*)["']"""),
    re.compile(r"""\bdefault_code\s*(?::\s*\w+\s*)?=\s*["']([A-Z][A-Z0-9_]*)["']"""),
)
#: Positional code-shaped constants need an underscore, so "RESYNC" or "INSERT" do not count.
POSITIONAL_CODE = re.compile(r"[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+")
ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*`?(\w+)`?\s*\|")


def source_files() -> list[Path]:
    """The core (without the ``p2pdb/plugins`` link) and the plugins, each file once."""
    core = [p for p in (ROOT / "p2pdb").rglob("*.py") if "plugins" not in p.parts]
    return sorted(core + list((ROOT / "plugins").rglob("*.py")))


def ast_codes(tree: ast.AST) -> set[str]:
    """Codes the regexes miss: every string constant inside a ``code=...`` argument
    (``code="A" if x else "B"``), and code-shaped constants passed positionally."""
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        for keyword in node.keywords:
            if keyword.arg == "code":
                found.update(
                    c.value
                    for c in ast.walk(keyword.value)
                    if isinstance(c, ast.Constant)
                    and isinstance(c.value, str)
                    and CODE_SHAPE.fullmatch(c.value)
                )
        for arg in node.args:
            if (
                isinstance(arg, ast.Constant)
                and isinstance(arg.value, str)
                and POSITIONAL_CODE.fullmatch(arg.value)
            ):
                found.add(arg.value)
    return found


def raised_codes() -> dict[str, set[str]]:
    """Every code in the source, with the files it appears in."""
    codes: dict[str, set[str]] = {}
    for path in source_files():
        text = path.read_text()
        found: set[str] = set()
        for pattern in PATTERNS:
            found.update(pattern.findall(text))
        found |= ast_codes(ast.parse(text))
        for code in found:
            codes.setdefault(code, set()).add(str(path.relative_to(ROOT)))
    for code in QUERY_ERROR_CODES:
        codes.setdefault(code, set()).add("p2pdb/query.py")
    return codes


def documented_codes() -> dict[str, str]:
    """Code -> class name, from the rows of the tables in docs/errors.md."""
    rows: dict[str, str] = {}
    for line in DOC.read_text().splitlines():
        match = ROW.match(line)
        if match and CODE_SHAPE.fullmatch(match.group(1)):
            assert match.group(1) not in rows, f"{match.group(1)} is listed twice"
            rows[match.group(1)] = match.group(2)
    return rows


def test_the_collector_finds_codes() -> None:
    codes = raised_codes()
    # one of each source: keyword, default_code, positional helper argument, the tuple
    for code in ("DOCUMENT_EXISTS", "P2PDB", "STREAM_OVERFLOW", "QUERY_INVALID_SELECTOR"):
        assert code in codes, code


def test_every_raised_code_is_documented() -> None:
    documented = documented_codes()
    missing = {
        code: sorted(files) for code, files in raised_codes().items() if code not in documented
    }
    assert missing == {}, f"add these codes to docs/errors.md: {missing}"


def test_docs_list_no_code_that_does_not_exist() -> None:
    extra = sorted(set(documented_codes()) - set(raised_codes()))
    assert extra == [], f"docs/errors.md lists codes nothing raises: {extra}"


def test_documented_classes_exist() -> None:
    classes = set(p2pdb.errors.__all__) | {StreamOverflowError.__name__}
    wrong = {code: cls for code, cls in documented_codes().items() if cls not in classes}
    assert wrong == {}, f"unknown error classes in docs/errors.md: {wrong}"
