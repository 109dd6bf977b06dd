"""The layout's rules, checked on the source: no import cycle between files (imports inside
functions included), the core never imports a surface, ``fallback_models`` never imports
``eval``. docs/architecture.md draws the same rules."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("llm_router", "fallback_models", "eval")
SURFACES = ("llm_router.corpus", "llm_router.service")
# The public facade and the command sit above the surfaces: they may load them (lazily).
FRONT = ("llm_router", "llm_router.__main__", "llm_router.cli")


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.Module) -> set[int]:
    """Lines of ``if TYPE_CHECKING:`` blocks: imports for the type checker, never run."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(root: Path, path: Path, modules: set[str]) -> Iterator[str]:
    """Every project module ``path`` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    own = module_name(root, path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
            # `from package import module` imports the module; else the package itself
            names = [n for n in names[:-1] if n in modules] or [base]
        else:
            continue
        for name in names:
            while name and name not in modules:  # `import a.b.c` of a module a.b, say
                name = name.rpartition(".")[0]
            if name and name != own:
                yield name


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    files = [p for package in packages for p in sorted((root / package).rglob("*.py"))]
    modules = {module_name(root, p) for p in files}
    return {module_name(root, p): set(imports_of(root, p, modules)) for p in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def forbidden(graph: dict[str, set[str]]) -> list[str]:
    """Imports that run against the layers."""
    problems = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            core = _within(module, ("llm_router",)) and not (
                module in FRONT or _within(module, SURFACES)
            )
            if core and (
                _within(target, (*SURFACES, "fallback_models", "eval")) or target in FRONT
            ):
                problems.append(f"core {module} imports {target}")
            if _within(module, ("fallback_models",)) and (
                _within(target, ("eval", *SURFACES)) or target in FRONT
            ):
                problems.append(f"{module} imports {target}")
    return problems


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT, PACKAGES)


def test_no_import_cycle_between_files(graph):
    assert cycles(graph) == []


def test_imports_run_one_way(graph):
    assert forbidden(graph) == []


def test_the_graph_sees_the_real_imports(graph):
    assert (
        "llm_router.router" in graph["llm_router.chain"]
        or "llm_router.chain" in graph["llm_router.router"]
    )
    assert "llm_router.corpus" in graph["llm_router"]  # the lazy classify_file
    assert "fallback_models.registry" in graph["eval.systems"]


def test_a_lazy_import_cycle_is_caught(tmp_path):
    package = tmp_path / "llm_router"
    (package / "corpus").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "corpus" / "__init__.py").write_text("")
    (package / "chain.py").write_text("def build():\n    from llm_router.corpus import job\n")
    (package / "corpus" / "job.py").write_text("from llm_router import chain\n")
    graph = import_graph(tmp_path, ("llm_router",))
    assert cycles(graph) == [["llm_router.chain", "llm_router.corpus.job"]]
    assert forbidden(graph) == ["core llm_router.chain imports llm_router.corpus.job"]


def test_an_import_of_eval_from_fallback_models_is_caught(tmp_path):
    for package in ("fallback_models", "eval"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "eval" / "scoring.py").write_text("")
    (tmp_path / "fallback_models" / "train.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import eval\n"
        "def f():\n    from eval.scoring import x\n"
    )
    graph = import_graph(tmp_path, ("fallback_models", "eval"))
    assert forbidden(graph) == ["fallback_models.train imports eval.scoring"]
