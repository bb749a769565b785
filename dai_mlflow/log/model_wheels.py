"""The small wheels a logged model carries in ``code/`` and names in its ``requirements.txt``.

``dai_mlflow_model_hooks`` (every model) and ``dai_mlflow_serving_shim`` (Python 3.8 models),
built reproducibly, versioned by a hash of the hooks' sources so MLflow never reuses a stale env.
Project env side; the wheels' contents are model-side. See docs/logging.md, "The wheels a model
carries".
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, List, Tuple

from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.log.wheelfile import build_wheel
from dai_mlflow.model.hooks import MODULES

MODEL_SUBDIR = "code"  # MLflow's documented place for wheels shipped with a model
BASE_VERSION = "1.0.0"
WHEEL_TAG = "py3-none-any"
HOOKS_PROJECT = "dai_mlflow_model_hooks"
SHIM_PROJECT = "dai_mlflow_serving_shim"
# Only Pythons MLflow 3 does not support get the shim (a real uvicorn can never be there).
SHIM_BELOW_PYTHON = (3, 9)
_HOOKS_SOURCE = Path(__file__).resolve().parents[1] / "model" / "hooks"
_HOOKS_MAIN = (
    b'"""python -m dai_mlflow_model_hooks: what the hooks did at interpreter start."""\n'
    b"import sys\n\nfrom dai_mlflow_model_hooks import main\n\nsys.exit(main())\n"
)
_PTH_LINE = f"import {HOOKS_PROJECT}; {HOOKS_PROJECT}.install()\n".encode()


def _versioned(files: Dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return f"{BASE_VERSION}+{digest.hexdigest()[:10]}"


def hooks_files() -> Dict[str, bytes]:
    """Archive name -> bytes of the hooks wheel's payload (the package and the ``.pth``)."""
    files = {f"{HOOKS_PROJECT}/{name}": (_HOOKS_SOURCE / name).read_bytes() for name in MODULES}
    files[f"{HOOKS_PROJECT}/__main__.py"] = _HOOKS_MAIN
    files[f"{HOOKS_PROJECT}.pth"] = _PTH_LINE
    return files


def hooks_version() -> str:
    """The hooks wheel's version: ``1.0.0+<hash of its payload>``."""
    return _versioned(hooks_files())


def build_hooks_wheel(out_dir: Path) -> Path:
    """Write the hooks wheel into ``out_dir``; its path."""
    return build_wheel(
        out_dir,
        HOOKS_PROJECT,
        hooks_version(),
        WHEEL_TAG,
        hooks_files(),
        summary="Interpreter-start fixes and servers for DAI model envs (dai-mlflow)",
        # prometheus-client: the metrics of the model's own server (serve.py); MLflow does
        # not bring it into a model env.
        requires_dist=('importlib-resources>=5; python_version < "3.9"', "prometheus-client>=0.16"),
        requires_python=">=3.8",
    )


def build_shim_wheel(out_dir: Path) -> Path:
    """Write the serving shim wheel (a ``uvicorn`` script into the hooks) into ``out_dir``."""
    version = hooks_version()
    return build_wheel(
        out_dir,
        SHIM_PROJECT,
        version,
        WHEEL_TAG,
        {},
        summary="uvicorn command that serves MLflow 2.x models with gunicorn (dai-mlflow)",
        requires_dist=(f"{HOOKS_PROJECT}=={version}",),
        requires_python=">=3.7",
        entry_points=f"[console_scripts]\nuvicorn = {HOOKS_PROJECT}.serving_shim:main\n",
    )


def python_tuple(python_version: str) -> Tuple[int, int]:
    """``"3.8.18"`` or ``"3.8"`` -> ``(3, 8)``.

    Raises:
        ValueError: not ``X.Y[.Z]``.
    """
    parts = python_version.strip().split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError) as e:
        raise ValueError(f"python version {python_version!r} is not X.Y[.Z]") from e


def needs_shim(python_version: str) -> bool:
    """Whether a model env of ``python_version`` gets the serving shim."""
    return python_tuple(python_version) < SHIM_BELOW_PYTHON


def add_to_model(model_dir: Path, python_version: str) -> List[str]:
    """Write the wheels a model of ``python_version`` needs into ``<model_dir>/code/``.

    Returns:
        The ``requirements.txt`` lines for them (relative to the model folder, as MLflow
        resolves them when it restores the env): the hooks always, the shim below Python 3.9.

    Raises:
        DaiMlflowError: ``python_version`` is malformed or the folder is not writable.
    """
    try:
        builders = [build_hooks_wheel] + ([build_shim_wheel] if needs_shim(python_version) else [])
        wheels = [build(model_dir / MODEL_SUBDIR) for build in builders]
    except (ValueError, OSError) as e:
        raise DaiMlflowError(f"cannot add dai-mlflow's wheels to {model_dir}: {e}") from e
    return [f"./{MODEL_SUBDIR}/{wheel.name}" for wheel in wheels]
