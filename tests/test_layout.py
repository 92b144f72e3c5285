"""The package layout shows the pipeline, and stays that way (issue 10).

Walks every import in `newsletter/` — those inside functions too, but not
`if TYPE_CHECKING:` blocks, which never run — and checks that dependencies
point one way down the pipeline, that no module imports another package's
`_private` names, and that no modules import each other in a circle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "newsletter"

# Lowest first: a package may import packages on its own level or below.
LAYERS = ["", "store", "posts", "email", "audience", "delivery", "daemon", "web", "cli"]
ROOT_MODULES = {"config", "errors", "files", "logging_setup", "lazy", "shutdown"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """ast.walk, minus the bodies of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child):
            for other in child.orelse:
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)


def imports_of(source: str, modules: set[str]) -> Iterator[tuple[str, str]]:
    """(module imported, name taken from it or "") for each newsletter import."""
    for node in _walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "newsletter":
                    yield alias.name, ""
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "newsletter":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                # `from pkg import submodule` is an import of the submodule.
                yield (sub, "") if sub in modules else (node.module, alias.name)


def package_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return ""
    if parts[1] == "__main__":
        return "cli"
    return "" if parts[1] in ROOT_MODULES else parts[1]


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    names = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = {target for target, _ in imports_of(path.read_text(), names)}
        graph[name] = {d for d in deps if d in names and d != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as a path that ends where it starts, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (found := visit(dep)) is not None:
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def test_find_cycle_sees_a_circle_and_a_clean_graph() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_imports_inside_functions_count_but_type_checking_blocks_do_not() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from newsletter.cli import main\n"
        "def f():\n    from newsletter.delivery import mailings\n"
    )
    found = set(imports_of(source, {"newsletter.delivery.mailings"}))
    assert found == {("newsletter.delivery.mailings", "")}


def test_no_import_cycles_between_modules() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_dependencies_point_down_the_pipeline() -> None:
    wrong = []
    for module, deps in import_graph().items():
        level = LAYERS.index(package_of(module))
        for dep in deps:
            if LAYERS.index(package_of(dep)) > level:
                wrong.append(f"{module} imports {dep}")
    assert wrong == []


def test_no_private_name_is_taken_from_another_package() -> None:
    modules = all_modules()
    names = set(modules)
    wrong = []
    for module, path in modules.items():
        for target, name in imports_of(path.read_text(), names):
            private = name.startswith("_") or any(
                p.startswith("_") and p != "__init__" for p in target.split(".")[1:]
            )
            if private and package_of(target) != package_of(module):
                wrong.append(f"{module} imports {target}:{name}")
    assert wrong == []


@pytest.mark.parametrize("package", [p for p in LAYERS if p])
def test_each_package_names_its_api(package: str) -> None:
    init = PACKAGE / package / "__init__.py"
    tree = ast.parse(init.read_text())
    assert ast.get_docstring(tree), f"{package}/__init__.py has no docstring"
    exported = [
        n
        for n in tree.body
        if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets)
    ]
    assert exported, f"{package}/__init__.py has no __all__"


@pytest.mark.parametrize("package", ["posts", "email", "audience", "delivery", "daemon"])
def test_every_exported_name_resolves(package: str) -> None:
    import importlib

    mod = importlib.import_module(f"newsletter.{package}")
    for name in mod.__all__:
        assert getattr(mod, name) is not None
