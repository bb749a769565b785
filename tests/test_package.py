"""Every name a dai_mlflow module reads on another dai_mlflow module exists.

ruff does not follow ``module.NAME`` across files, and the code that reads such a name may run
only in a slow test (a lifecycle run, a model env). When a constant moves (``CHALLENGER`` from
``lifecycle.registry`` to ``tracking``), a reader left behind fails here, in the fast tests, not
after half an hour of ``make test``. The check imports each module and reads every
``alias.NAME`` whose alias is a dai_mlflow module imported by that file. A local variable named
like an imported module is reported too: it hides the module from the reader.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import types
from typing import Dict, List

import dai_mlflow


def _ours(module: str) -> bool:
    return module.split(".")[0] == "dai_mlflow"


def _module_aliases(tree: ast.AST) -> Dict[str, types.ModuleType]:
    """Local name -> dai_mlflow module, for every import of one in the file (top or nested)."""
    aliases: Dict[str, types.ModuleType] = {}
    for node in ast.walk(tree):
        # Only the package itself: dai_mlflow_http_limits & co. are script copies beside a model.
        if isinstance(node, ast.ImportFrom) and _ours(node.module or ""):
            for name in node.names:
                try:
                    obj = importlib.import_module(f"{node.module}.{name.name}")
                except ImportError:
                    obj = getattr(importlib.import_module(str(node.module)), name.name, None)
                if isinstance(obj, types.ModuleType):
                    aliases[name.asname or name.name] = obj
        elif isinstance(node, ast.Import):
            for name in node.names:
                if _ours(name.name) and name.asname:
                    aliases[name.asname] = importlib.import_module(name.name)
    return aliases


def missing_names(source: str, where: str) -> List[str]:
    """``where:line: alias.NAME`` for each ``alias.NAME`` that the imported module lacks."""
    tree = ast.parse(source, where)
    aliases = _module_aliases(tree)
    return sorted(
        f"{where}:{node.lineno}: {node.value.id}.{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        and not hasattr(aliases[node.value.id], node.attr)
    )


def test_every_cross_module_name_exists() -> None:
    problems: List[str] = []
    modules = 0
    for info in pkgutil.walk_packages(dai_mlflow.__path__, "dai_mlflow."):
        if info.name.endswith("__main__"):  # runs its command when imported
            continue
        module = importlib.import_module(info.name)
        with open(str(module.__file__)) as f:
            problems += missing_names(f.read(), info.name)
        modules += 1
    assert modules > 40  # the walk saw the package, not an empty folder
    assert problems == []


def test_the_check_finds_a_name_that_moved_away() -> None:
    # The reader the last CI run failed on: the aliases moved to dai_mlflow.tracking.
    source = (
        "from dai_mlflow.lifecycle import registry\n"
        "from dai_mlflow import tracking\n"
        "def f():\n"
        "    return registry.CHALLENGER, tracking.CHALLENGER, registry.require_alias\n"
    )
    assert missing_names(source, "m") == ["m:4: registry.CHALLENGER"]
