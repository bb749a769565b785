"""Fail on any import cycle among a package's modules: ``python tools/import_cycles.py dai_mlflow``.

Every import counts, at the top of a module or inside a function (a lazy import only hides a
cycle). ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to
``pkg``; imports under ``if TYPE_CHECKING:`` do not count. Stdlib only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Dict, List, Set, Tuple


def package_modules(root: Path) -> Dict[str, Tuple[Path, bool]]:
    """Dotted name -> (file, is a package) for every module under ``root``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _type_checking_nodes(tree: ast.AST) -> Set[int]:
    skipped: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    return skipped


def edges(name: str, path: Path, is_package: bool, known: Dict) -> Set[str]:
    """The package modules ``name`` imports."""
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_nodes(tree)
    here = name.split(".") if is_package else name.split(".")[:-1]
    out: Set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        targets: List[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                targets.append(sub if sub in known else module)
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: List[List[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
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
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        print("usage: python tools/import_cycles.py PACKAGE_DIR", file=sys.stderr)
        return 2
    known = package_modules(Path(argv[0]).resolve())
    graph = {name: edges(name, path, pkg, known) for name, (path, pkg) in known.items()}
    found = cycles(graph)
    for component in found:
        print(f"import cycle: {' <-> '.join(component)}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
