"""The project's guard for its seams, read from the source with :mod:`ast`.

Every module of ``p2pdb/`` and ``plugins/`` is parsed (``plugins/X`` is the same module as
``p2pdb.plugins.X``: ``p2pdb/plugins`` is a link to it, so both names map to one module).

* **No import cycle.** The graph has an edge for every import of a project module:
  top-level, inside functions, and under ``if TYPE_CHECKING:``; relative imports resolved.
  ``from a import b`` is an edge to ``a.b`` when that is a module, else to ``a``. Importing
  ``a.b`` also runs ``a/__init__``, but that implicit edge to the parent package is not
  counted (every package imports its own submodules, so it would make every package a
  cycle); an explicit import of a package is an edge to its ``__init__``.
* **No private names across modules.** A private name starts with one underscore (not
  ``_`` alone, not a dunder). Flagged:

  - ``from m import _name`` of a project module ``m``; a private *module* (``_x.py``) may
    only be imported from inside the package that holds it;
  - ``m._name`` where ``m`` is a name bound to a project module by an import;
  - ``expr._name`` where ``expr`` is not ``self`` or ``cls``, and ``_name`` is defined by
    a class of another project module (a method, a class attribute, a ``self._name = ...``
    assignment or a ``__slots__`` entry) and by no class of the module using it. Private
    attributes that no project class defines (a third-party object's, such as a
    namedtuple's ``_replace``) are not this check's business.

  Reads and writes through ``self``/``cls`` are never flagged, even for attributes a base
  class in another module defines.
* **Small modules.** No module over ``MAX_LINES`` lines.
* **A light replication core.** ``import p2pdb.replication`` loads none of aiortc, av,
  websockets (checked in a fresh interpreter).

Each violation is one line of the failure message.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450
TRANSPORT_ONLY = ("aiortc", "av", "websockets")


@dataclass
class Module:
    """One parsed source file and its dotted name."""

    name: str
    path: Path
    tree: ast.Module
    is_package: bool
    lines: int
    imports: list[tuple[str, list[str], int]] = field(default_factory=list)
    """``(target module or package, imported names, line)`` for each import statement."""

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @property
    def where(self) -> str:
        """``path`` relative to the project, for messages."""
        return str(self.path.relative_to(ROOT))


def _source_files() -> Iterator[tuple[str, Path]]:
    """``(dotted name, path)`` of every module; the ``p2pdb/plugins`` link is not followed,
    ``plugins/`` is walked as ``p2pdb.plugins`` instead."""
    roots = [("p2pdb", ROOT / "p2pdb"), ("p2pdb.plugins", ROOT / "plugins")]
    for prefix, base in roots:
        for path in sorted(base.rglob("*.py")):
            relative = path.relative_to(base)
            if prefix == "p2pdb" and relative.parts[0] == "plugins":
                continue
            if any(part in ("node_modules", "__pycache__") for part in relative.parts):
                continue
            parts = list(relative.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join([prefix, *parts]), path


def canonical(name: str) -> str:
    """``plugins.X`` and ``p2pdb.plugins.X`` are one module."""
    if name == "plugins" or name.startswith("plugins."):
        return "p2pdb." + name
    return name


def parse(name: str, path: Path, text: str, is_package: bool) -> Module:
    """One module, its imports resolved to absolute dotted names."""
    module = Module(name, path, ast.parse(text, str(path)), is_package, len(text.splitlines()))
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module.imports.append((canonical(alias.name), [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = canonical(node.module or "")
            module.imports.append((target, [a.name for a in node.names], node.lineno))
    return module


@cache
def modules() -> dict[str, Module]:
    """Every project module by dotted name."""
    return {
        name: parse(name, path, path.read_text(), path.name == "__init__.py")
        for name, path in _source_files()
    }


def import_graph(mods: dict[str, Module]) -> dict[str, set[str]]:
    """Project module -> the project modules it imports (see the module docstring)."""
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for module in mods.values():
        for target, names, _line in module.imports:
            if names:
                for name in names:
                    if f"{target}.{name}" in mods:
                        graph[module.name].add(f"{target}.{name}")
                    elif target in mods:
                        graph[module.name].add(target)
            elif target in mods:
                graph[module.name].add(target)
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components with more than one module (or a module importing itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                result.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return result


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest cycle through the first module of ``component`` (for the message)."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(graph[node] & members):
            if nxt == start:
                return [*paths[node], start]
            if nxt not in paths:
                paths[nxt] = [*paths[node], nxt]
                queue.append(nxt)
    return [start, start]


def import_cycles() -> list[str]:
    """One line per cycle of modules."""
    graph = import_graph(modules())
    return [
        f"import cycle among {{{', '.join(c)}}}: {' -> '.join(one_cycle(graph, c))}"
        for c in strongly_connected(graph)
    ]


def is_private(name: str) -> bool:
    """One leading underscore: not ``_`` itself, not a dunder."""
    return name.startswith("_") and not name.startswith("__") and name != "_"


def private_class_attributes(module: Module) -> set[str]:
    """Private names the classes of ``module`` define."""
    names: set[str] = set()
    for cls in ast.walk(module.tree):
        if not isinstance(cls, ast.ClassDef):
            continue
        for node in cls.body:  # methods, nested classes, class attributes, __slots__
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                names.add(node.name)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id == "__slots__":
                        names.update(
                            c.value
                            for c in ast.walk(node.value)
                            if isinstance(c, ast.Constant) and isinstance(c.value, str)
                        )
                    elif isinstance(target, ast.Name):
                        names.add(target.id)
        for node in ast.walk(cls):  # self._x = ... in any method
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id in ("self", "cls")
            ):
                names.add(node.attr)
    return {n for n in names if is_private(n)}


def private_name_uses(mods: dict[str, Module]) -> list[str]:
    """One line per use of another module's private name (see the module docstring)."""
    defined = {name: private_class_attributes(m) for name, m in mods.items()}
    violations: list[str] = []
    for module in mods.values():
        bound: dict[str, str] = {}  # local name -> project module it is bound to
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target = canonical(alias.name)
                    if target in mods:
                        bound[alias.asname or target.split(".")[0]] = (
                            target if alias.asname else target.split(".")[0]
                        )
        for target, names, line in module.imports:
            referenced = []  # the project modules this import statement names
            for name in names:
                if f"{target}.{name}" in mods:
                    bound[name] = f"{target}.{name}"
                    referenced.append(f"{target}.{name}")
                elif target in mods:
                    referenced.append(target)
                    if is_private(name):
                        violations.append(
                            f"{module.where}:{line}: imports private name {name} from {target}"
                        )
            if not names and target in mods:
                referenced.append(target)
            for used in referenced:
                package, _, last = used.rpartition(".")
                if is_private(last) and not _inside(module.name, package):
                    violations.append(
                        f"{module.where}:{line}: imports private module {used} "
                        f"from outside {package}"
                    )
        own = defined[module.name]
        others: dict[str, list[str]] = {}
        for owner, names in defined.items():
            for name in names - own if owner != module.name else ():
                others.setdefault(name, []).append(owner)
        for node in ast.walk(module.tree):
            if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
                continue
            value = node.value
            if isinstance(value, ast.Name) and value.id in ("self", "cls"):
                continue
            if isinstance(value, ast.Name) and value.id in bound:
                violations.append(
                    f"{module.where}:{node.lineno}: uses {bound[value.id]}.{node.attr}"
                )
            elif node.attr in others:
                violations.append(
                    f"{module.where}:{node.lineno}: uses {ast.unparse(node)}, a private "
                    f"attribute of a class in {' or '.join(sorted(others[node.attr]))}"
                )
    return sorted(set(violations))


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def long_modules() -> list[str]:
    """One line per module over ``MAX_LINES`` lines."""
    return [
        f"{m.where}: {m.lines} lines (at most {MAX_LINES})"
        for m in sorted(modules().values(), key=lambda m: m.where)
        if m.lines > MAX_LINES
    ]


def _report(violations: list[str]) -> str:
    return f"{len(violations)} violation(s):\n" + "\n".join(violations)


def test_the_walk_finds_core_and_plugins() -> None:
    names = set(modules())
    assert {"p2pdb", "p2pdb.collection", "p2pdb.replication.master"} <= names
    assert "p2pdb.plugins.encryption" in names
    assert not any(n.startswith("plugins") for n in names)


def test_the_checks_catch_what_they_look_for() -> None:
    cyclic = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert strongly_connected(cyclic) == [["a", "b", "c"], ["e"]]
    assert one_cycle(cyclic, ["a", "b", "c"]) == ["a", "b", "c", "a"]
    assert is_private("_x") and not is_private("__x__") and not is_private("_")
    tree = ast.parse(
        textwrap.dedent(
            """
            class A:
                __slots__ = ("_slot",)
                _klass = 1
                def __init__(self):
                    self._attr = 1
                def _method(self):
                    pass
            """
        )
    )
    module = Module("m", ROOT / "m.py", tree, False, 0)
    assert private_class_attributes(module) == {"_slot", "_klass", "_attr", "_method"}


def test_the_private_name_check_flags_each_kind_and_nothing_else() -> None:
    sources = {
        "pkg": ("", True),
        "pkg.owner": ("class Owner:\n    def __init__(self):\n        self._secret = 1\n"
                      "    def _hidden(self): ...\n    def peek(self, other):\n"
                      "        return other._secret\n_helper = 1\n", False),
        "pkg._impl": ("X = 1\n", False),
        "app": ("", True),
        "app.user": ("from pkg.owner import _helper\nfrom pkg import owner\n"
                         "from pkg._impl import X\n"
                         "def f(o, fut):\n    fut._loop\n    o._secret\n"
                         "    return owner._helper\n", False),
        "pkg.ok": ("from ._impl import X\nclass C:\n    def m(self):\n"
                   "        return self._secret\n", False),
    }  # fmt: skip
    mods = {
        name: parse(name, ROOT / (name.replace(".", "/") + ".py"), text, is_package)
        for name, (text, is_package) in sources.items()
    }
    found = [line.split(": ", 1)[1] for line in private_name_uses(mods)]
    assert found == [
        "imports private name _helper from pkg.owner",
        "imports private module pkg._impl from outside pkg",
        "uses o._secret, a private attribute of a class in pkg.owner",
        "uses pkg.owner._helper",
    ]
    assert import_graph(mods)["app.user"] == {"pkg.owner", "pkg._impl"}


def test_no_import_cycles() -> None:
    cycles = import_cycles()
    assert cycles == [], _report(cycles)


def test_no_module_uses_another_modules_private_names() -> None:
    uses = private_name_uses(modules())
    assert uses == [], _report(uses)


def test_no_module_is_too_long() -> None:
    long = long_modules()
    assert long == [], _report(long)


def test_import_replication_loads_no_transport() -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import p2pdb.replication
        heavy = {TRANSPORT_ONLY!r}
        print(",".join(sorted(n for n in sys.modules if n.split(".")[0] in heavy)))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"import p2pdb.replication loaded: {result.stdout}"
