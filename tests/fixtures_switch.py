"""Fixtures for switching models of one DAI line (loaded by tests/conftest.py).

- ``variant_model(dai_version, problem) -> LoggedDaiModel``: the stand-in pipeline of that line
  and problem with its model *retrained* (the fitted model inside the experiment wheel changed)
  under the *same* experiment wheel file name and module, logged by the real ``mlflow run`` and
  cached under ``tests/.cache/logged/<sources key>/variant-<line>-<problem>/``. With the
  original (``logged_model``) it is the MLflow #10525 case: same wheel name, other contents.
- ``shifted_pin(model_dir, dest) -> Path``: a copy of a logged model folder whose
  ``requirements.txt`` pins one shared dependency at another version.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path
from typing import Callable, Dict

import pytest
from filelock import FileLock

from dai_mlflow.standin import SCORER_ZIP_NAME
from tests.fixtures_model import (
    CACHE,
    LoggedDaiModel,
    get_logged_model,
    last_stdout_line,
    license_env_for,
    mlflow_run,
    run_env,
    sources_key,
)

# Added to every bias term of the retrained model: predictions move visibly.
BIAS_SHIFT = 1.5


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"sha256={digest}"


def retrain_wheel(wheel: Path, dest: Path) -> Path:
    """Copy ``wheel`` to ``dest`` (same file name) with a changed ``fitted_model.json``."""
    with zipfile.ZipFile(wheel) as zf:
        files = {info.filename: zf.read(info) for info in zf.infolist()}
    model_name = next(n for n in files if n.endswith("/fitted_model.json"))
    model = json.loads(files[model_name])
    model["bias"] = [b + BIAS_SHIFT for b in model["bias"]]
    files[model_name] = (json.dumps(model, indent=1) + "\n").encode()
    record_name = next(n for n in files if n.endswith(".dist-info/RECORD"))
    lines = []
    for line in files[record_name].decode().splitlines():
        name = line.split(",")[0]
        if name == model_name:
            line = f"{name},{_record_hash(files[name])},{len(files[name])}"
        lines.append(line)
    files[record_name] = ("\n".join(lines) + "\n").encode()
    target = dest / wheel.name
    with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return target


def make_variant(model: LoggedDaiModel, out_dir: Path) -> Path:
    """A scorer.zip like ``model``'s pipeline, experiment wheel retrained under the same name."""
    build = model.build
    folder = out_dir / "scoring-pipeline"
    shutil.rmtree(out_dir, ignore_errors=True)
    shutil.copytree(build.folder, folder)
    retrain_wheel(build.folder / build.experiment_wheel, folder)
    zip_path = out_dir / SCORER_ZIP_NAME
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(out_dir).as_posix())
    return zip_path


def get_variant_model(dai_version: str, problem: str) -> LoggedDaiModel:
    """Log (or reuse) the retrained variant with ``mlflow run``."""
    original = get_logged_model(dai_version, problem)
    folder = CACHE / "logged" / sources_key() / f"variant-{dai_version}-{problem}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    result_file = folder / "result.json"
    name = f"dai_{dai_version.replace('.', '_')}_{problem}_variant"
    with FileLock(str(folder) + ".lock"):
        if not result_file.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            zip_path = make_variant(original, folder / "pipeline")
            tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
            env = run_env(
                {
                    **license_env_for(original.build, dai_version),
                    "MLFLOW_TRACKING_URI": tracking_uri,
                }
            )
            proc = mlflow_run(
                {"pipeline": str(zip_path), "model_name": name}, folder / "cwd", env, folder
            )
            last = last_stdout_line(proc.stdout)
            if proc.returncode != 0 or not last.startswith("model_uri="):
                tail = "\n".join(proc.stderr.splitlines()[-30:])
                raise AssertionError(f"mlflow run failed for the variant:\n{tail}")
            import mlflow

            client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
            version = client.get_model_version_by_alias(name, "challenger")
            artifact_uri = client.get_run(version.run_id).info.artifact_uri
            result = {
                "model_uri": last.split("=", 1)[1],
                "tracking_uri": tracking_uri,
                "local_dir": str(Path(artifact_uri) / "model"),
                "run_id": version.run_id,
            }
            result_file.write_text(json.dumps(result, indent=2))
        data = json.loads(result_file.read_text())
    pipeline = folder / "pipeline"
    build = replace(
        original.build,
        out_dir=pipeline,
        zip_path=pipeline / SCORER_ZIP_NAME,
        folder=pipeline / "scoring-pipeline",
    )
    return replace(
        original,
        model_uri=data["model_uri"],
        tracking_uri=data["tracking_uri"],
        local_dir=Path(data["local_dir"]),
        run_id=data["run_id"],
        model_name=name,
        alias="challenger",
        build=build,
        stdout=folder / "stdout.txt",
        stderr=folder / "stderr.txt",
    )


@pytest.fixture(scope="session")
def variant_model() -> Callable[[str, str], LoggedDaiModel]:
    """Factory: ``variant_model("1.10", "binary")`` → the retrained same-name variant."""
    cache: Dict[tuple, LoggedDaiModel] = {}

    def _get(dai_version: str, problem: str) -> LoggedDaiModel:
        if (dai_version, problem) not in cache:
            cache[(dai_version, problem)] = get_variant_model(dai_version, problem)
        return cache[(dai_version, problem)]

    return _get


_PIN = re.compile(r"^(six)==(\S+)$", re.M)


def shift_pin(model_dir: Path, dest: Path) -> Path:
    """Copy a logged model folder, pinning ``six`` (a shared dependency) at another version
    (in requirements.txt and, when it pins it too, constraints.txt)."""
    shutil.copytree(model_dir, dest)
    req = dest / "requirements.txt"
    assert _PIN.search(req.read_text()), f"{req} pins no six"
    for name in ("requirements.txt", "constraints.txt"):
        path = dest / name
        if path.is_file():
            path.write_text(_PIN.sub(r"\1==1.17.0", path.read_text()))
    return dest


@pytest.fixture
def shifted_pin() -> Callable[[Path, Path], Path]:
    """Factory: ``shifted_pin(model_dir, dest)`` → a copy with one shared pin changed."""
    return shift_pin
