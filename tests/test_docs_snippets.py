"""Every ```python block of README.md and docs/*.md runs as written.

The convention (this docstring is its reference):

- The blocks of one file run in order, in one namespace, as cells typed into Python's asyncio
  REPL (``python -m asyncio``): top-level ``await``, ``async with`` and ``async for`` work,
  and a block may use what an earlier block of the same file defined. Every block runs inside
  the event loop, except a whole program (a block calling ``asyncio.run``), which runs as
  one.
- Each file runs in a fresh Python process, with a time limit, in one folder shared by all
  files (README.md first, then docs/ in name order), so two pages that use the same database
  file with different schemas fail here as they would for a reader.
- ``<!-- not-runnable: reason -->`` on the line above a block skips it: for signatures shown
  as code, and for code that needs a server elsewhere. Used sparingly.
- ``<!-- snippet-setup: note`` then CODE on the following lines, up to a line starting with
  ``-->``, runs where it stands, between the blocks: for a page that continues from another
  (say, "the ``todos`` collection of the quickstart"), it builds that context. It is shown
  nowhere, so it is kept to the context a reader already has.
- A file's script ends with ``os._exit(0)``: snippets need not close what they opened.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import orjson
import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT = 90.0  # seconds per file

FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
NOT_RUNNABLE = re.compile(r"<!--\s*not-runnable:[^>]*-->\s*$")
SETUP = re.compile(r"<!--\s*snippet-setup:[^\n]*\n(.*?)^-->", re.MULTILINE | re.DOTALL)

#: Runs the cells it reads from stdin (JSON: [[label, first_line, source], ...]).
RUNNER = textwrap.dedent(
    """
    import ast, asyncio, inspect, os, sys, traceback
    import orjson

    cells = orjson.loads(sys.stdin.buffer.read())
    namespace = {"__name__": "__main__"}
    loop = asyncio.new_event_loop()

    async def run_inside(code):
        exec(code, namespace)

    for label, first_line, source in cells:
        print(f"running the block at {label}:{first_line}", file=sys.stderr, flush=True)
        # Blank lines first, so a traceback gives the line number in the Markdown file.
        padded = "\\n" * (first_line - 1) + source
        try:
            code = compile(padded, label, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
            if code.co_flags & inspect.CO_COROUTINE:  # top-level await
                loop.run_until_complete(eval(code, namespace))
            elif "asyncio.run(" in source:  # a whole program: it runs its own loop
                exec(code, namespace)
            else:  # in the loop, as the asyncio REPL runs it (callbacks may need the loop)
                loop.run_until_complete(run_inside(code))
        except BaseException:
            print(f"block at {label}:{first_line} failed:", file=sys.stderr)
            traceback.print_exc()
            sys.stderr.flush()
            os._exit(1)
    sys.stdout.flush()
    os._exit(0)
    """
)


def cells(path: Path, root: Path = ROOT) -> list[tuple[str, int, str]]:
    """The blocks of a Markdown file to run, in order: (file name, first line, source)."""
    text = path.read_text()
    label = str(path.relative_to(root))
    found: list[tuple[int, int, str]] = []  # (offset, first line, source)
    for match in SETUP.finditer(text):
        line = text.count("\n", 0, match.start(1)) + 1
        found.append((match.start(), line, match.group(1)))
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        if NOT_RUNNABLE.search(before):
            continue
        line = text.count("\n", 0, match.start(1)) + 1
        found.append((match.start(), line, match.group(1)))
    return [(label, line, source) for _, line, source in sorted(found)]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One folder for every file's snippets, as for a reader trying them all."""
    return tmp_path_factory.mktemp("snippets")


def test_the_convention_finds_blocks() -> None:
    readme = cells(ROOT / "README.md")
    assert len(readme) >= 4
    assert readme[0][0] == "README.md" and "create_database" in readme[0][2]


def run_blocks(blocks: list[tuple[str, int, str]], folder: Path) -> str | None:
    """Run one file's blocks in a fresh process; None if they ran, else what went wrong."""
    try:
        result = subprocess.run(
            [sys.executable, "-c", RUNNER],
            input=orjson.dumps(blocks),
            cwd=folder,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        output = (error.stderr or b"").decode(errors="replace")[-6000:]
        return f"the snippets did not finish within {TIMEOUT:g} s\n{output}"
    if result.returncode != 0:
        return "a snippet failed\n" + result.stderr.decode(errors="replace")[-6000:]
    return None


def test_a_failing_block_is_reported_with_its_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- snippet-setup: context\nimport asyncio\nx = 1\n-->\n\n"
        "<!-- not-runnable: a signature -->\n```python\ndef f(a: Undefined): ...\n```\n\n"
        "```python\nawait asyncio.sleep(0)\nassert x == 2, 'x is 1'\n```\n"
    )
    blocks = cells(page, root=tmp_path)
    assert [line for _, line, _ in blocks] == [2, 12]  # the setup, then the runnable block
    problem = run_blocks(blocks, tmp_path)
    assert problem is not None and "page.md:12 failed" in problem
    assert 'File "page.md", line 13' in problem and "x is 1" in problem


@pytest.mark.timeout(TIMEOUT + 30)
@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_snippets_run(path: Path, folder: Path) -> None:
    blocks = cells(path)
    problem = run_blocks(blocks, folder) if blocks else None
    if problem is not None:
        pytest.fail(f"{path.name}: {problem}", pytrace=False)
