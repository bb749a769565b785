"""tools/import_cycles.py (run by ``make lint``): it finds a cycle, also through a lazy import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "import_cycles.py"


def _package(root: Path, files: dict) -> Path:
    for rel, text in files.items():
        path = root / "pkg" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def _run(package: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOL), str(package)], capture_output=True, text=True, timeout=60
    )


def test_a_cycle_through_a_lazy_import_fails(tmp_path: Path) -> None:
    package = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "sub/__init__.py": "",
        "b.py": "def f():\n    from pkg.sub import c\n",
        "sub/c.py": "from .. import a\n",
    })  # fmt: skip
    proc = _run(package)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "import cycle: pkg.a <-> pkg.b <-> pkg.sub.c"


def test_type_checking_imports_and_one_way_imports_pass(tmp_path: Path) -> None:
    package = _package(tmp_path, {
        "__init__.py": "from pkg import a\n",
        "a.py": "from pkg import b\n",
        "b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n",
    })  # fmt: skip
    proc = _run(package)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_the_package_has_no_import_cycle() -> None:
    proc = _run(REPO / "dai_mlflow")
    assert (proc.returncode, proc.stderr) == (0, "")
