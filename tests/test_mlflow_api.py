"""dai_mlflow uses MLflow's public API only: no underscore names, no unwrapping, no patching.

The test reads every module of the package (and the Spark front door) and lists the MLflow names
it uses: modules it imports, names it imports from them, and attributes it reads on them. Any
name with a leading underscore (MLflow's private API, which changes between releases without
notice), any ``__wrapped__``, and any assignment to an attribute of an MLflow module or object
fails it. The list is printed (``pytest -s``) so a reviewer sees what dai_mlflow depends on.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO_ROOT / "dai_mlflow").rglob("*.py")) + [
    REPO_ROOT / "spark_inference" / "score.py"
]


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts))
    return ""


def mlflow_names(path: Path, root: Path = REPO_ROOT) -> Tuple[Set[str], List[str]]:
    """(MLflow names used, problems) of one source file (named relative to ``root``)."""
    tree = ast.parse(path.read_text(), str(path))
    aliases: Dict[str, str] = {}  # local name -> mlflow dotted name
    used: Set[str] = set()
    problems: List[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "mlflow":
                    used.add(a.name)
                    aliases[(a.asname or a.name).split(".")[0]] = a.name if a.asname else "mlflow"
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "mlflow":
            for a in node.names:
                name = f"{node.module}.{a.name}"
                used.add(name)
                aliases[a.asname or a.name] = name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain = _dotted(node)
            head = chain.split(".")[0]
            if head in aliases:
                used.add(aliases[head] + chain[len(head) :])
            if node.attr == "__wrapped__":
                problems.append(f"{path.name}:{node.lineno}: unwraps {chain}")
        if isinstance(node, (ast.Assign, ast.AugAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                chain = _dotted(target) if isinstance(target, ast.Attribute) else ""
                if chain and chain.split(".")[0] in aliases:
                    problems.append(f"{path.name}:{node.lineno}: assigns {chain}")
    for name in used:
        private = [p for p in name.split(".") if p.startswith("_") and not p.startswith("__")]
        if private:
            problems.append(f"{path.relative_to(root)}: uses private {name}")
    return used, problems


def test_only_public_mlflow_names_are_used(capsys) -> None:
    used: Set[str] = set()
    problems: List[str] = []
    for path in SOURCES:
        names, found = mlflow_names(path)
        used |= names
        problems += found
    assert len(used) > 10, "found almost no MLflow names: the scan itself is broken"
    with capsys.disabled():
        print(f"\nMLflow names dai_mlflow uses ({len(used)}):\n  " + "\n  ".join(sorted(used)))
    assert problems == []


def test_the_scan_finds_private_names_and_patches(tmp_path: Path) -> None:
    """The checker itself can fail: each kind of misuse is reported."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import mlflow.pyfunc\n"
        "from mlflow.pyfunc import backend\n"
        "from mlflow.utils.virtualenv import _get_python_env\n"
        "backend._STDIN_SERVER_SCRIPT = 'x'\n"
        "mlflow.pyfunc.load_model = None\n"
        "f = mlflow.pyfunc.spark_udf.__wrapped__\n"
    )
    _, problems = mlflow_names(bad, tmp_path)
    text = "\n".join(problems)
    assert "_get_python_env" in text
    assert "assigns backend._STDIN_SERVER_SCRIPT" in text
    assert "assigns mlflow.pyfunc.load_model" in text
    assert "unwraps" in text
