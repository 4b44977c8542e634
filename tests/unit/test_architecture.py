"""The package's layering rules, read from the source with ast: no import cycle, no private
name taken from another module, a docstring in every module, no module past 600 lines."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from helpers import SRC

PACKAGE = "container_desktop_relay"
MAX_LINES = 600
#: Modules allowed past MAX_LINES for now.
TOO_LONG_FOR_NOW: set[str] = set()
#: The foundation every layer may use; it uses nothing else of the package.
FOUNDATION = {f"{PACKAGE}.{m}" for m in ("_version", "log", "errors", "durations", "thirdparty")}
#: Layer -> the subpackages (and top-level modules) it must not import: the layering rule of
#: docs/architecture.md.
FORBIDDEN = {
    "core": ("ssh", "runtime", "observability", "commands", "endpoints", "config", "cli"),
    "endpoints": ("core", "ssh", "runtime", "observability", "commands", "config", "cli"),
    "ssh": ("commands", "cli"),
    "runtime": ("commands", "cli"),
    "observability": ("commands", "cli"),
}


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its __init__.py)."""
    out = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth (functions too), except under TYPE_CHECKING."""
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield from _imports_in(other)
            continue
        yield from _imports_in(child)


def _imports_in(node: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    if isinstance(node, ast.Import | ast.ImportFrom):
        yield node
    yield from _imports(node)


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module an ``ImportFrom`` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{node.module}" if node.module else base


def _graph() -> tuple[dict[str, set[str]], list[str]]:
    """Project imports as edges ``module -> modules``, and every private name imported from
    another project module (``from x import _name``)."""
    modules = _modules()
    edges: dict[str, set[str]] = {name: set() for name in modules}
    private: list[str] = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in _imports(tree):
            if isinstance(node, ast.Import):
                edges[name] |= {a.name for a in node.names if a.name in modules}
                continue
            source = _resolve(name, path, node)
            if source != PACKAGE and not source.startswith(PACKAGE + "."):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in modules:  # from package import module
                    edges[name].add(submodule)
                    continue
                edges[name].add(source)
                dunder = alias.name.startswith("__") and alias.name.endswith("__")
                if alias.name.startswith("_") and not dunder and source != name:
                    private.append(f"{name}: from {source} import {alias.name}")
    return edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in edges[node]:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle() -> None:
    """No group of the package's modules imports itself round, even from inside a function
    (imports under ``if TYPE_CHECKING:`` aside)."""
    edges, _ = _graph()
    assert len(edges) > 50 and edges[f"{PACKAGE}.cli"], "the walk found the package"
    assert _cycles(edges) == []


def test_no_private_name_crosses_a_module() -> None:
    """No module imports another project module's underscore name."""
    _, private = _graph()
    assert private == []


def test_every_module_has_a_docstring() -> None:
    """Each module opens with a docstring saying its job."""
    missing = [name for name, path in _modules().items()
               if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))]
    assert missing == []


def test_no_module_is_longer_than_600_lines() -> None:
    """Each module stays under the limit (the listed exceptions are on their way down)."""
    long = {name: n for name, path in _modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
            and name not in TOO_LONG_FOR_NOW}
    assert long == {}


def _layer(module: str) -> str:
    """``core`` for ``container_desktop_relay.core.pump``; the module itself at top level."""
    return module.removeprefix(PACKAGE + ".").split(".")[0]


def test_layers_import_only_downwards() -> None:
    """core/ (the pump and its transport-blind parts) and endpoints/ import only the
    foundation; no role part imports an operator command; the foundation imports only itself;
    commands/ is reached only through cli."""
    edges, _ = _graph()
    wrong = []
    for module, targets in edges.items():
        layer = _layer(module)
        for target in targets:
            if _layer(target) in FORBIDDEN.get(layer, ()):
                wrong.append(f"{module} -> {target}")
            if module in FOUNDATION and target not in FOUNDATION and target != PACKAGE:
                wrong.append(f"{module} -> {target} (the foundation imports only itself)")
            if (_layer(target) == "commands" and layer not in ("commands", "cli")
                    and module != PACKAGE):
                wrong.append(f"{module} -> {target} (commands are reached through cli)")
    assert sorted(wrong) == []


def test_core_does_not_know_ssh() -> None:
    """The pump's core imports no SSH library: the SSH channel is an adapter in ssh/."""
    for name, path in _modules().items():
        if _layer(name) in ("core", "endpoints"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            roots = {(a.name if isinstance(n, ast.Import) else (n.module or "")).split(".")[0]
                     for n in _imports(tree) for a in n.names}
            assert "asyncssh" not in roots, name


def test_the_checks_see_what_they_look_for() -> None:
    """The cycle finder and the import walk find a planted cycle and private import."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]]
    tree = ast.parse("import x\nif TYPE_CHECKING:\n    import y\nelse:\n    import z\n"
                     "def f():\n    from p import _q\n")
    names = [a.name for node in _imports(tree) for a in node.names]
    assert names == ["x", "z", "_q"]
