"""Fixtures of logged DAI models (loaded by tests/conftest.py).

- ``logged_model(dai_version, problem) -> LoggedDaiModel``: the stand-in pipeline of that line
  and problem, logged and registered by the real ``mlflow run`` command (a subprocess from
  ``venvs/launcher``), cached under ``tests/.cache/logged/<key>/`` behind a file lock. The key
  hashes the product sources, MLproject, python_env.yaml and the stand-in builder, so a code
  change logs again.

How each line is logged (so one set of models covers both tracking set-ups and both inputs):

- DAI 1.10: ``scorer.zip``, the *embedded default* store (no ``MLFLOW_TRACKING_URI``; cwd is
  the model's cache folder, so the store is ``<that folder>/mlflow.db``), default alias
  ``challenger``, license from ``DRIVERLESS_AI_LICENSE_FILE``.
- DAI 2: the unzipped folder copied under another name (``my-dai-export``), an explicit
  ``MLFLOW_TRACKING_URI=sqlite:///<folder>/store/mlflow.db``, ``-P alias=champion``, license
  from ``DRIVERLESS_AI_LICENSE_KEY``.

Consumers read ``model_uri`` (``models:/<name>/<version>``) with ``tracking_uri`` set, or
``local_dir`` (the logged model folder on disk). ``model_python()`` returns the python of the
model's own env (built from its python_env.yaml + requirements.txt, cached).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
from filelock import FileLock

from dai_mlflow.standin import StandinBuild, builder_fingerprint
from tests.fixtures_standin import get_standin

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / "tests" / ".cache"
LAUNCHER_BIN = REPO_ROOT / "venvs" / "launcher" / "bin"
PYTHONS_DIR = REPO_ROOT / "venvs" / "pythons"
# MLflow's own env restores (mlflow models serve, spark_udf, predict) take a folder that exists
# as built, so two test workers restoring one env at once would race: one root per worker.
MLFLOW_ENV_ROOT = CACHE / "mlflow-envs" / os.environ.get("PYTEST_XDIST_WORKER", "main")
MODEL_ENV_ROOT = CACHE / "model-envs"
# What `mlflow run` logs is made from these and from every file of the package (so a new module
# can never leave the cache stale); the stand-in builder has its own fingerprint.
_PROJECT_FILES = ("MLproject", "python_env.yaml", "scorer_entry.py")
ALIASES = {"1.10": "challenger", "2": "champion"}
ALL_CASES = tuple(
    (line, problem) for line in ("1.10", "2") for problem in ("regression", "binary", "multiclass")
)
# Logging runs are partly waits (scorer start-up, server start-up): a few at once save time.
PREFETCH_WORKERS = int(os.environ.get("DAI_MLFLOW_TEST_LOG_WORKERS", "3"))


@dataclass(frozen=True)
class LoggedDaiModel:
    """A stand-in pipeline logged by ``mlflow run``.

    Attributes:
        model_uri: ``models:/<name>/<version>`` (resolve with ``tracking_uri``).
        tracking_uri: the store the run and the registry live in.
        local_dir: the logged model folder on disk (``.../artifacts/model``).
        run_id: the MLflow run.
        model_name: registered model name; ``alias`` points at the version.
        alias: the alias set on the version.
        build: the stand-in build that was logged.
        stdout: ``mlflow run``'s stdout file; ``stderr`` its stderr file.
        license_env: env vars that give the model its license (pass them when scoring).
    """

    model_uri: str
    tracking_uri: str
    local_dir: Path
    run_id: str
    model_name: str
    alias: str
    build: StandinBuild
    stdout: Path
    stderr: Path
    license_env: Dict[str, str]
    seconds: float


def package_files() -> list:
    """The package's files (sources and package data), relative to the checkout, sorted."""
    package = REPO_ROOT / "dai_mlflow"
    return sorted(
        p.relative_to(REPO_ROOT).as_posix()
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and "standin" not in p.parts
    )


def sources_key() -> str:
    """Hash of everything that changes what ``mlflow run`` logs."""
    digest = hashlib.sha256(builder_fingerprint().encode())
    for rel in [*_PROJECT_FILES, *package_files()]:
        digest.update(rel.encode() + b"\0")
        digest.update((REPO_ROOT / rel).read_bytes())
    return digest.hexdigest()[:12]


def license_env_for(build: StandinBuild, dai_version: str) -> Dict[str, str]:
    """DAI 1.10 models read the license file, DAI 2 models the base64 key."""
    if dai_version == "1.10":
        return {"DRIVERLESS_AI_LICENSE_FILE": str(build.license_path)}
    return {"DRIVERLESS_AI_LICENSE_KEY": base64.b64encode(build.license_path.read_bytes()).decode()}


def run_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Environment of a user who ran ``source venvs/launcher/bin/activate``, minus stray MLflow
    and license variables, plus the test caches."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "DRIVERLESS_AI_"))
        and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        and not k.startswith("PYSPARK_")  # the in-process Spark session's workers, not a user's
    }
    env["PATH"] = os.pathsep.join([str(LAUNCHER_BIN), str(PYTHONS_DIR), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(LAUNCHER_BIN.parent)
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["MLFLOW_ENV_ROOT"] = str(MLFLOW_ENV_ROOT)
    env["DAI_MLFLOW_ENV_ROOT"] = str(MODEL_ENV_ROOT)
    env.update(extra or {})
    return env


def mlflow_run(
    params: Dict[str, str],
    cwd: Path,
    env: Dict[str, str],
    out_dir: Path,
    project: Path = REPO_ROOT,
    extra_args: tuple = (),
) -> subprocess.CompletedProcess:
    """Run ``mlflow run <project> -P k=v ...`` and keep its output in ``out_dir``."""
    cmd = [str(LAUNCHER_BIN / "mlflow"), "run", str(project), *extra_args]
    for k, v in params.items():
        cmd += ["-P", f"{k}={v}"]
    out_dir.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    with (out_dir / "stdout.txt").open("w") as so, (out_dir / "stderr.txt").open("w") as se:
        proc = subprocess.run(cmd, cwd=str(cwd), env=env, stdout=so, stderr=se, timeout=1500)
    return subprocess.CompletedProcess(
        cmd,
        proc.returncode,
        (out_dir / "stdout.txt").read_text(),
        (out_dir / "stderr.txt").read_text(),
    )


def run_child_json(
    cmd: List[str], cwd: Path, env: Dict[str, str], marker: str, timeout: int = 600
) -> Any:
    """Run a child Python that prints ``MARKER=<json>``; assert it succeeded and return the
    JSON of its last such line."""
    proc = subprocess.run(
        [str(c) for c in cmd],
        cwd=str(cwd),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(f"{marker}=")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(lines[-1].split("=", 1)[1])


def last_stdout_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _log(dai_version: str, problem: str, folder: Path) -> Dict[str, object]:
    build = get_standin(dai_version, problem)
    name = f"dai_{dai_version.replace('.', '_')}_{problem}"
    lic = license_env_for(build, dai_version)
    params = {"model_name": name}
    if dai_version == "1.10":
        cwd = folder
        tracking_uri = f"sqlite:///{folder / 'mlflow.db'}"
        env = run_env(lic)
        params["pipeline"] = str(build.zip_path)
    else:
        cwd = folder / "cwd"
        store = folder / "store"
        store.mkdir(parents=True, exist_ok=True)
        tracking_uri = f"sqlite:///{store / 'mlflow.db'}"
        env = run_env({**lic, "MLFLOW_TRACKING_URI": tracking_uri})
        export = folder / "my-dai-export"
        if not export.exists():
            shutil.copytree(build.folder, export)
        params["pipeline"] = str(export)
        params["alias"] = ALIASES["2"]
    started = time.monotonic()
    proc = mlflow_run(params, cwd, env, folder)
    seconds = time.monotonic() - started
    last = last_stdout_line(proc.stdout)
    if proc.returncode != 0 or not last.startswith("model_uri="):
        tail = "\n".join(proc.stderr.splitlines()[-30:])
        raise AssertionError(f"mlflow run failed for {dai_version}/{problem}:\n{tail}")
    model_uri = last.split("=", 1)[1]
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    version = client.get_model_version_by_alias(name, ALIASES[dai_version])
    artifact_uri = client.get_run(version.run_id).info.artifact_uri
    return {
        "model_uri": model_uri,
        "tracking_uri": tracking_uri,
        "local_dir": str(Path(artifact_uri) / "model"),
        "run_id": version.run_id,
        "model_name": name,
        "alias": ALIASES[dai_version],
        "seconds": seconds,
    }


def _folder(dai_version: str, problem: str) -> Path:
    return CACHE / "logged" / sources_key() / f"{dai_version}-{problem}"


def prefetch_logged_models(cases=ALL_CASES) -> None:
    """Log every case not cached yet, several at once (the first alone: it builds the project
    env, which concurrent ``mlflow run`` calls must not race to create)."""
    missing = [c for c in cases if not (_folder(*c) / "result.json").is_file()]
    if not missing:
        return
    get_logged_model(*missing[0])
    with ThreadPoolExecutor(max_workers=max(1, PREFETCH_WORKERS)) as pool:
        list(pool.map(lambda c: get_logged_model(*c), missing[1:]))


def get_logged_model(dai_version: str, problem: str) -> LoggedDaiModel:
    """Log (or reuse) the stand-in of a line and problem with the real ``mlflow run``."""
    build = get_standin(dai_version, problem)
    folder = _folder(dai_version, problem)
    folder.parent.mkdir(parents=True, exist_ok=True)
    result_file = folder / "result.json"
    with FileLock(str(folder) + ".lock"):
        if not result_file.is_file():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            result = _log(dai_version, problem, folder)
            result_file.write_text(json.dumps(result, indent=2))
        data = json.loads(result_file.read_text())
    return LoggedDaiModel(
        model_uri=str(data["model_uri"]),
        tracking_uri=str(data["tracking_uri"]),
        local_dir=Path(str(data["local_dir"])),
        run_id=str(data["run_id"]),
        model_name=str(data["model_name"]),
        alias=str(data["alias"]),
        build=build,
        stdout=folder / "stdout.txt",
        stderr=folder / "stderr.txt",
        license_env=license_env_for(build, dai_version),
        seconds=float(data["seconds"]),  # type: ignore[arg-type]
    )


def model_python(model: LoggedDaiModel) -> Path:
    """Python of the model's own env (``dai_mlflow.envs.model_env``, cached under the test root)."""
    from dai_mlflow.envs.model_env import ensure_model_env

    return ensure_model_env(model.local_dir, "uv", str(MODEL_ENV_ROOT))


@pytest.fixture(scope="session")
def logged_model() -> Callable[[str, str], LoggedDaiModel]:
    """Factory: ``logged_model("1.10", "binary")`` → a :class:`LoggedDaiModel`."""
    cache: Dict[tuple, LoggedDaiModel] = {}

    def _get(dai_version: str, problem: str) -> LoggedDaiModel:
        if (dai_version, problem) not in cache:
            cache[(dai_version, problem)] = get_logged_model(dai_version, problem)
        return cache[(dai_version, problem)]

    return _get


def project_with_env(line: str) -> Path:
    """A copy of the project whose ``python_env.yaml`` is ``envs/python_env.dai-<line>.yaml``
    (the checkout's default is the DAI 2 one): ``mlflow run`` of it builds that line's project
    env. Cached per sources key; made beside and renamed, so concurrent workers share it."""
    project = CACHE / "logged" / sources_key() / f"project-dai-{line}"
    with FileLock(str(project) + ".lock"):
        if not (project / "python_env.yaml").is_file():
            part = project.with_name(project.name + ".part")
            shutil.rmtree(part, ignore_errors=True)
            part.mkdir(parents=True)
            for name in ("MLproject", "scorer_entry.py", "dai_mlflow"):
                src = REPO_ROOT / name
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, part / name)
            env_file = REPO_ROOT / "envs" / f"python_env.dai-{line}.yaml"
            shutil.copy2(env_file, part / "python_env.yaml")
            shutil.rmtree(project, ignore_errors=True)
            part.rename(project)
    return project


def dai110_project_python() -> Path:
    """Python of the DAI 1.10 project env (Python 3.8, mlflow 2.17: the one that needs the
    tracking bridge), built as ``make venvs`` builds ``venvs/mlproject`` after ``make use-line
    LINE=1.10``, cached in the test cache."""
    dest = CACHE / "venvs" / "mlproject-dai-1.10"
    with FileLock(str(dest) + ".lock"):
        subprocess.run(
            [str(LAUNCHER_BIN / "python"), "-m", "dai_mlflow.envs.venvs", "python-env",
             "--quiet", "--dest", str(dest),
             "--python-env", str(REPO_ROOT / "envs" / "python_env.dai-1.10.yaml"),
             "--installer", "pip"],
            check=True, cwd=str(REPO_ROOT), capture_output=True, timeout=900,
        )  # fmt: skip
    return dest / "bin" / "python"
