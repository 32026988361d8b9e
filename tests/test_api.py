"""The public surface of the package: what ``import p2pdb`` loads, exports and documents."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

import p2pdb

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "p2pdb"

#: Heavy or optional dependencies that only plugins may import.
PLUGIN_ONLY = ("aiortc", "aioice", "av", "cryptography", "websockets")


def public_modules() -> list[ModuleType]:
    """``p2pdb`` and every core module whose dotted name has no part starting with ``_``
    (plugins are excluded: they live in ``p2pdb.plugins`` and need extra dependencies)."""
    modules: list[ModuleType] = []
    pending = [p2pdb]
    while pending:
        package = pending.pop()
        modules.append(package)
        for info in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            last = info.name.rsplit(".", 1)[1]
            if last.startswith("_") or info.name == "p2pdb.plugins":
                continue
            module = importlib.import_module(info.name)
            (pending if info.ispkg else modules).append(module)
    return sorted(modules, key=lambda m: m.__name__)


def isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps ``__all__`` in: CONSTANTS, then Classes, then functions."""
    if name.isupper():
        return (0, name)
    return (1, name) if name[:1].isupper() else (2, name)


def test_import_p2pdb_loads_no_plugin_and_no_heavy_dependency() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import p2pdb
        assert p2pdb.__file__ is not None and p2pdb.__file__.startswith({str(PACKAGE)!r}), (
            p2pdb.__file__
        )
        heavy = {PLUGIN_ONLY!r}
        loaded = sorted(
            name for name in sys.modules
            if name == "p2pdb.plugins" or name.startswith("p2pdb.plugins.")
            or name.split(".")[0] in heavy
        )
        print(",".join(loaded))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"import p2pdb loaded: {result.stdout.strip()}"


def test_all_is_sorted_and_complete() -> None:
    assert p2pdb.__all__ == sorted(p2pdb.__all__, key=isort_key)
    assert len(set(p2pdb.__all__)) == len(p2pdb.__all__)
    for name in p2pdb.__all__:
        assert hasattr(p2pdb, name), f"p2pdb.__all__ names {name!r}, which does not exist"


@pytest.mark.parametrize("name", p2pdb.__all__)
def test_every_exported_name_has_a_docstring(name: str) -> None:
    value = getattr(p2pdb, name)
    if inspect.isclass(value) or inspect.isfunction(value):
        assert inspect.getdoc(value), f"p2pdb.{name} has no docstring"
    elif isinstance(value, str | int | float | tuple | frozenset):
        assert constant_is_documented(name), f"p2pdb.{name} has no #: comment or docstring"
    else:  # an object such as master_wins: its class documents it
        assert inspect.getdoc(type(value)), f"p2pdb.{name} has no docstring"


def constant_is_documented(name: str) -> bool:
    """A module-level constant has a ``#:`` comment above it or a docstring below it."""
    definition = re.compile(rf"^{re.escape(name)}\b\s*(:[^=]*)?=")
    for path in PACKAGE.rglob("*.py"):
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines):
            if definition.match(line):
                above = lines[number - 1].lstrip() if number else ""
                below = lines[number + 1].lstrip() if number + 1 < len(lines) else ""
                if above.startswith("#:") or below.startswith('"""'):
                    return True
    return False


@pytest.mark.parametrize("module", public_modules(), ids=lambda m: m.__name__)
def test_public_modules_document_their_classes_and_functions(module: ModuleType) -> None:
    assert inspect.getdoc(module), f"{module.__name__} has no module docstring"
    names = getattr(module, "__all__", None)
    if names is not None:
        assert list(names) == sorted(names, key=isort_key), f"{module.__name__}.__all__ order"
    else:
        names = [n for n in vars(module) if not n.startswith("_")]
    missing: list[str] = []
    for name in names:
        value = getattr(module, name)
        if not (inspect.isclass(value) or inspect.isfunction(value)):
            continue
        if value.__module__ != module.__name__:
            continue  # re-exported: checked where it is defined
        if not inspect.getdoc(value):
            missing.append(name)
        if inspect.isclass(value):
            missing += [f"{name}.{m}" for m in undocumented_members(value)]
    assert missing == [], f"{module.__name__}: no docstring on {missing}"


def undocumented_members(cls: type) -> list[str]:
    """Public methods and properties defined on ``cls`` itself without a docstring."""
    missing = []
    for attr, member in vars(cls).items():
        if attr.startswith("_"):
            continue
        if isinstance(member, property):
            if not (member.fget and member.fget.__doc__):
                missing.append(attr)
        elif isinstance(member, staticmethod | classmethod):
            if not member.__func__.__doc__:
                missing.append(attr)
        elif inspect.isfunction(member) and not member.__doc__:
            missing.append(attr)
    return missing


def test_package_is_typed() -> None:
    assert (PACKAGE / "py.typed").is_file()


USER_SCRIPT = '''
import asyncio

import p2pdb
from p2pdb.plugins.replication_webrtc import (
    aiortc_connection_handler,
    replicate_webrtc,
    start_signaling_server,
)

SCHEMA = {"version": 0, "primaryKey": "id", "type": "object",
          "properties": {"id": {"type": "string", "maxLength": 100}}, "required": ["id"]}


async def main() -> None:
    async with p2pdb.create_database(":memory:") as db:
        todos: p2pdb.Collection = await db.add_collection("todos", schema=SCHEMA)
        doc: p2pdb.Document = await todos.insert({"id": "milk"})
        doc = await doc.patch({"priority": 3})
        found: list[p2pdb.Document] = await todos.find({}, limit=20)
        left: int = await todos.count()
        server = await start_signaling_server(port=8080)
        handler = aiortc_connection_handler("ws://127.0.0.1:8080", ice_servers=[])
        pool = await replicate_webrtc(todos, "my-app-todos", handler)
        await pool.wait_for_in_sync()
        await pool.cancel()
        await server.close()
        print(doc.revision, found, left)


asyncio.run(main())
'''

WRONG_SCRIPT = '''
import p2pdb


async def wrong(doc: p2pdb.Document) -> int:
    return doc.revision
'''


def test_a_users_script_type_checks_against_the_installed_package(tmp_path: Path) -> None:
    """``mypy --strict`` finds ``p2pdb`` and its plugins where pip installed them (no
    ``PYTHONPATH``), and really reads their types: a wrong script is caught."""
    (tmp_path / "app.py").write_text(USER_SCRIPT)
    (tmp_path / "wrong.py").write_text(WRONG_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
         "--no-error-summary", "app.py", "wrong.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    errors = [line for line in result.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 1, result.stdout + result.stderr
    assert errors[0].startswith("wrong.py:6:") and '"str"' in errors[0], errors[0]
