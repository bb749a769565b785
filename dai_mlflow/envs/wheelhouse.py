"""A per-user folder of wheels built once from source-only releases (pyspark).

pyspark is an sdist only (~450 MB) that installers rebuilt, and cached again, for every venv.
So pinned source-only projects are built into a wheel here once, and every install of ours
passes the folder with ``--find-links``. ``$DAI_MLFLOW_WHEELHOUSE``, else
``$XDG_CACHE_HOME/dai-mlflow/wheels``, else ``~/.cache/dai-mlflow/wheels``. Only a speed-up: a
failed build falls back to the index. Stdlib only (run by the host Python). See README.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from dai_mlflow.envs.installers import installer_environ

WHEELHOUSE_ENV = "DAI_MLFLOW_WHEELHOUSE"
# Projects PyPI ships only as source; building them per install is what fills disks.
SOURCE_ONLY_PROJECTS = ("pyspark",)
_PIN = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9.+!-]+)\s*(?:[;#].*)?$")


def wheelhouse_dir() -> Path:
    """The wheelhouse folder (not created)."""
    explicit = os.environ.get(WHEELHOUSE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "dai-mlflow" / "wheels"


def source_only_pins(lines: Sequence[str]) -> List[str]:
    """``name==version`` pins among ``lines`` whose project PyPI ships as source only."""
    pins = []
    for line in lines:
        m = _PIN.match(line)
        if m and m.group(1).lower().replace("_", "-") in SOURCE_ONLY_PROJECTS:
            pins.append(f"{m.group(1).lower()}=={m.group(2)}")
    return pins


def find_wheel(pin: str, folder: Optional[Path] = None) -> Optional[Path]:
    """The wheelhouse's wheel for ``name==version``, if built."""
    name, version = pin.split("==", 1)
    folder = folder or wheelhouse_dir()
    stem = f"{name.replace('-', '_')}-{version}-"
    found = sorted(folder.glob(stem + "*.whl")) if folder.is_dir() else []
    return found[0] if found else None


def ensure_wheels(
    lines: Sequence[str], python: str, progress: Callable[[str], None], quiet: bool = True
) -> Optional[Path]:
    """Build the missing wheels of ``lines``' source-only pins; return the folder to pass
    with ``--find-links`` (None when ``lines`` pin no such project or nothing could be built).

    Args:
        lines: requirement lines of one install.
        python: an interpreter with pip (builds the wheel; pure-Python, so any version does).
        progress: receives one line per wheel built.
        quiet: capture pip's output instead of streaming it.
    """
    pins = source_only_pins(lines)
    if not pins:
        return None
    folder = wheelhouse_dir()
    have = False
    for pin in pins:
        if find_wheel(pin, folder) is None and not _build(pin, python, folder, progress, quiet):
            continue
        have = True
    return folder if have else None


def _build(
    pin: str, python: str, folder: Path, progress: Callable[[str], None], quiet: bool
) -> bool:
    """Build one wheel into ``folder`` atomically (a temp folder, then a rename)."""
    folder.mkdir(parents=True, exist_ok=True)
    progress(f"[wheelhouse] building {pin} once into {folder} (source-only on PyPI; ~1 min)")
    with tempfile.TemporaryDirectory(prefix=".build-", dir=folder) as tmp:
        # --use-pep517: build in an isolated env with setuptools and wheel from the index. A
        # Python whose own site-packages lacks `wheel` (pyenv's 3.8 with pip 23.0) otherwise
        # runs `setup.py bdist_wheel` and fails, and every venv rebuilt pyspark 3.5 again.
        cmd = [python, "-m", "pip", "wheel", "--use-pep517", "--no-deps", "--no-cache-dir"]
        cmd += ["-w", tmp, pin]
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE if quiet else None,
            stderr=subprocess.STDOUT if quiet else None,
            text=True,
            env=installer_environ(),
        )
        built = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not built:
            tail = (proc.stdout or "").strip().splitlines()[-1:] if quiet else []
            progress(
                f"[wheelhouse] could not build {pin} ({' '.join(tail) or proc.returncode}); "
                "installing it from the index instead"
            )
            return False
        target = folder / built[0].name
        if not target.exists():
            os.replace(built[0], target)
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)
    return True
