"""The import graph of rlft/ and envs/, read from the AST: no cycle, and every import goes down the layers.

Layers, bottom to top (DESIGN.md, "each imports only the layers below it")::

    rlft.errors, rlft.jsonl      leaf utilities
    rlft.config                  schema and defaults
    rlft.core                    Episode, RolloutBatch, advantages, pure losses
    rlft.runtime, rlft.models    faults / processes / signals / tracking; policy and critic models
    rlft.rollout                 the engine, generation backends, envs, demos, evaluation
    rlft.rewards                 reward designs, rules, learned reward models, alarm
    rlft.algorithms              the TRL bridge, the registry, GRPO, PPO
    rlft.stages                  sft, rm, rl, eval, checks
    rlft.tools, rlft.cli         command line, launch, sweep, compare

`envs` (the Gymnasium text envs) imports nothing from rlft; any layer may import it. Imports inside functions count
too (a lazy import is still a dependency). Imports under `if TYPE_CHECKING:` are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rlft", "envs")
LAYERS: list[tuple[str, ...]] = [
    ("rlft.errors", "rlft.jsonl", "rlft"),
    ("rlft.config",),
    ("rlft.core",),
    ("rlft.runtime", "rlft.models"),
    ("rlft.rollout",),
    ("rlft.rewards",),
    ("rlft.algorithms",),
    ("rlft.stages",),
    ("rlft.tools", "rlft.cli", "rlft.__main__"),
]


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, modules: set[str], root: Path = ROOT) -> set[str]:
    """The project modules `path` imports (anywhere in the file), resolved to the longest known module name."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)) or _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for imported in names:
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported:
                found.add(imported)
    found.discard(name)
    return found


def project_graph() -> dict[str, set[str]]:
    files = [p for package in PACKAGES for p in (ROOT / package).rglob("*.py")]
    modules = {module_name(p) for p in files}
    return {module_name(p): imports_of(p, modules) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    for root in sorted(graph):
        if state.get(root):
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        state[root] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(child) == 1:
                return path[path.index(child) :] + [child]
            elif not state.get(child):
                state[child] = 1
                stack.append((child, iter(sorted(graph.get(child, ())))))
                path.append(child)
    return None


def layer_of(module: str) -> int | None:
    best, level = -1, None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), index
    return level


def test_the_import_graph_has_no_cycle():
    cycle = find_cycle(project_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_go_down_the_layers():
    upward = []
    for module, imported in sorted(project_graph().items()):
        if module.startswith("envs"):
            upward += [
                f"{module} -> {name} (envs imports nothing from rlft)"
                for name in imported
                if name.startswith("rlft")
            ]
            continue
        level = layer_of(module)
        for name in sorted(imported):
            target = layer_of(name)
            if target is not None and level is not None and target > level:
                upward.append(f"{module} (layer {level}) -> {name} (layer {target})")
    assert not upward, "imports that run up the layers:\n" + "\n".join(upward)


def test_every_library_module_belongs_to_a_layer():
    orphans = [m for m in project_graph() if m.startswith("rlft") and layer_of(m) is None]
    assert not orphans, f"modules outside the layers of this test's LAYERS: {orphans}"


@pytest.mark.parametrize(
    "graph, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"b"}, "b": set(), "c": {"c"}}, ["c", "c"]),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
    ],
)
def test_the_cycle_finder_finds_cycles(graph, cycle):
    assert find_cycle(graph) == cycle


def test_imports_of_resolves_function_level_and_relative_imports(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg import b\n    from .c import thing\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\n")
    (package / "c.py").write_text("thing = 1\n")
    modules = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    assert imports_of(package / "a.py", modules, root=tmp_path) == {"pkg", "pkg.b", "pkg.c"}
    assert imports_of(package / "b.py", modules, root=tmp_path) == set()
