"""Log a DAI scoring pipeline as an MLflow pyfunc: stage, check in its own env, log, register.

:func:`log_pipeline` is what the MLflow Project's entry point runs: nothing is logged unless the
staged model loads and predicts in its own env and holds no byte of the license. Project env
side (MLflow 2.17 on Python 3.8, or MLflow 3). See docs/logging.md, "The steps".
Over 400 lines: staging, the check and logging are one sequence that must fail as a whole.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from dai_mlflow.envs.model_env import ModelProgramError, ensure_model_env, run_program
from dai_mlflow.envs.pythons import find_python
from dai_mlflow.errors import DaiMlflowError, say
from dai_mlflow.log.model_wheels import add_to_model
from dai_mlflow.log.pipeline import (
    ScoringPipeline,
    copy_pipeline,
    open_pipeline,
)
from dai_mlflow.log.requirements import (
    RequirementsPolicy,
    SanitizedRequirements,
    sanitize,
    shared_requirements,
)
from dai_mlflow.log.signature import (
    InputSpec,
    build_signature,
    example_frame,
    model_config_columns,
    read_input_spec,
)
from dai_mlflow.model.hooks import MODULES
from dai_mlflow.model.license import (
    LicenseSource,
    export_license_location,
    find_license,
    license_bytes,
)
from dai_mlflow.model.pyfunc import CONFIG_INPUT_COLUMNS, CONFIG_SCORER_MODULE, PIPELINE_ARTIFACT
from dai_mlflow.model.serving import MODULES as SERVING_MODULES
from dai_mlflow.tracking import CHALLENGER, TAG_PREFIX

MODEL_ARTIFACT_PATH = "model"
MODEL_CODE_FILE_NAME = "dai_scoring_model.py"
# What a model carries in code/dai_mlflow: the package's model side only (dai_mlflow/model/).
MODEL_SIDE_MODULES = (
    "__init__.py",
    "errors.py",
    "model/__init__.py",
    "model/pyfunc.py",
    "model/runtime.py",
    "model/experiment.py",
    "model/license.py",
    "model/http_limits.py",
    *(f"model/hooks/{name}" for name in MODULES),
    *(f"model/serving/{name}" for name in SERVING_MODULES),
    # The model's own server answers /rpc with DAI's protocol module.
    "serve/__init__.py",
    "serve/rpc.py",
)
DEFAULT_ALIAS = CHALLENGER
# Build dependencies of the model env per Python line (pip/setuptools releases that support it).
BUILD_DEPENDENCIES: Dict[str, Tuple[str, ...]] = {
    "3.8": ("pip==24.3.1", "setuptools==75.3.0", "wheel==0.45.1"),
}
BUILD_DEPENDENCIES_DEFAULT = ("pip==25.3", "setuptools==80.9.0", "wheel==0.45.1")
_SCAN_BLOCK = 1 << 20
_MODEL_CODE = '''\
"""MLflow models-from-code file of a DAI scoring pipeline (code/dai_mlflow/model/pyfunc.py)."""
import mlflow

from dai_mlflow.model import DaiScoringModel

mlflow.models.set_model(DaiScoringModel())
'''


class ModelCheckError(DaiMlflowError):
    """The staged model failed to load or score in its own env; it was not logged."""


class LicenseLeakError(DaiMlflowError):
    """A staged model file contains the license; nothing was logged."""


@dataclass(frozen=True)
class LogRequest:
    """What to log.

    Attributes:
        pipeline: scorer.zip or scoring-pipeline folder.
        model_name: registered model name; None logs without registering.
        alias: alias set on the registered version.
        policy: requirements rules.
        env_root: where model envs (the one the model is checked in) are cached.
    """

    pipeline: Path
    model_name: Optional[str] = None
    alias: str = DEFAULT_ALIAS
    policy: RequirementsPolicy = field(default_factory=RequirementsPolicy)
    env_root: Optional[Path] = None

    def __post_init__(self) -> None:
        if self.model_name is not None and not self.model_name.strip():
            raise DaiMlflowError("model_name is empty; omit it to log without registering")
        if not self.alias.strip():
            raise DaiMlflowError("alias is empty; omit it to use the default 'challenger'")


@dataclass(frozen=True)
class LogResult:
    """What was logged: the model URI to use, and registry coordinates when registered."""

    model_uri: str
    run_id: str
    runs_uri: str
    model_name: Optional[str] = None
    version: Optional[str] = None
    alias: Optional[str] = None
    output_columns: Tuple[str, ...] = ()


@dataclass(frozen=True)
class StagedModel:
    """A saved, not yet logged, model folder and what it was built from."""

    path: Path
    pipeline: ScoringPipeline
    requirements: SanitizedRequirements
    spec: InputSpec
    python_version: str


def _conda_env(
    python_version: str, reqs: SanitizedRequirements, constraints: Optional[Path]
) -> Dict[str, Any]:
    pip = list(reqs.requirements)
    if constraints is not None:
        pip.append(f"-c {constraints}")
    return {
        "name": "dai-mlflow-model",
        "channels": ["conda-forge"],
        "dependencies": [f"python={python_version}", "pip", {"pip": pip}],
    }


def _stage_code(dest: Path) -> Path:
    package = Path(__file__).resolve().parents[1]
    code = dest / "dai_mlflow"
    for name in MODEL_SIDE_MODULES:
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(package / name, code / name)
    return code


def _write_python_env(model_dir: Path, python_version: str) -> None:
    """Rewrite python_env.yaml for the pipeline's Python (MLflow writes this interpreter's;
    conda.yaml already names the pipeline's, from :func:`_conda_env`)."""
    import yaml

    major_minor = ".".join(python_version.split(".")[:2])
    build = BUILD_DEPENDENCIES.get(major_minor, BUILD_DEPENDENCIES_DEFAULT)
    data = {
        "python": python_version,
        "build_dependencies": list(build),
        "dependencies": ["-r requirements.txt"],
    }
    (model_dir / "python_env.yaml").write_text(yaml.safe_dump(data, sort_keys=False))


def stage_model(
    source: Path,
    work: Path,
    policy: Optional[RequirementsPolicy] = None,
    pipeline: Optional[ScoringPipeline] = None,
) -> StagedModel:
    """Save the pyfunc for ``source`` into ``work/model`` without logging it.

    Args:
        source: scorer.zip or scoring-pipeline folder.
        work: an empty scratch folder (extraction, staging, the model folder).
        policy: requirements rules.
        pipeline: ``source`` already opened (by :func:`preflight`): not extracted again.

    Returns:
        The staged model.

    Raises:
        PipelineError, RequirementsError, DaiMlflowError: the pipeline cannot be modelled.
    """
    import mlflow.pyfunc

    if pipeline is None:
        pipeline = open_pipeline(source, work / "extracted")
    reqs = shared_requirements(sanitize(pipeline, policy or RequirementsPolicy()), pipeline)
    for note in reqs.notes:
        say(f"requirements: {note}")
    spec = read_input_spec(pipeline)
    interpreter = find_python(pipeline.python)

    staging = work / "staging"
    staging.mkdir(parents=True)
    artifacts_dir = copy_pipeline(pipeline, staging / PIPELINE_ARTIFACT)
    code_dir = _stage_code(staging / "code")
    model_file = staging / MODEL_CODE_FILE_NAME
    model_file.write_text(_MODEL_CODE)
    constraints = None
    if reqs.constraints:
        constraints = staging / "constraints.in"
        constraints.write_text("\n".join(reqs.constraints) + "\n")

    model_dir = work / "model"
    # The model's pins differ from the logging env's on purpose (other Python, other mlflow):
    # MLflow's "mismatch" warnings about that would only mislead.
    logging.getLogger("mlflow.utils.requirements_utils").setLevel(logging.ERROR)
    mlflow.pyfunc.save_model(
        path=str(model_dir),
        python_model=str(model_file),
        code_paths=[str(code_dir)],
        artifacts={PIPELINE_ARTIFACT: str(artifacts_dir)},
        conda_env=_conda_env(interpreter.version, reqs, constraints),
        signature=build_signature(spec),
        input_example=example_frame(spec),
        model_config={
            CONFIG_SCORER_MODULE: pipeline.module_name,
            CONFIG_INPUT_COLUMNS: model_config_columns(spec),
        },
        metadata={
            "dai_version": pipeline.dai_version or "unknown",
            "dai_line": pipeline.dai_line,
            "scorer_module": pipeline.module_name,
            "experiment_wheel": pipeline.experiment_wheel.file_name,
        },
    )
    _write_python_env(model_dir, interpreter.version)
    _add_model_wheels(model_dir, interpreter.version)
    _check_layout(model_dir, reqs)
    return StagedModel(model_dir, pipeline, reqs, spec, interpreter.version)


def _add_model_wheels(model_dir: Path, python_version: str) -> None:
    """Ship the wheels every env of the model needs (:mod:`dai_mlflow.log.model_wheels`): the
    interpreter-start hooks, and for Python 3.8 the ``uvicorn`` shim that lets MLflow 3's
    ``mlflow models serve`` start the env's own MLflow 2.x server."""
    import yaml

    lines = add_to_model(model_dir, python_version)
    for line in lines:
        say(f"requirements: + {line} (shipped with the model, see docs/model-hooks.md)")
    req = model_dir / "requirements.txt"
    text = req.read_text()
    req.write_text(
        text + ("" if not text or text.endswith("\n") else "\n") + "\n".join(lines) + "\n"
    )
    conda = model_dir / "conda.yaml"
    if conda.is_file():
        env = yaml.safe_load(conda.read_text())
        for dep in env.get("dependencies", []):
            if isinstance(dep, dict) and isinstance(dep.get("pip"), list):
                dep["pip"].extend(lines)
        conda.write_text(yaml.safe_dump(env, sort_keys=False))


def _check_layout(model_dir: Path, reqs: SanitizedRequirements) -> None:
    stored = model_dir / "artifacts" / PIPELINE_ARTIFACT
    missing = [w for w in reqs.wheels if not (stored / w).is_file()]
    if missing:
        raise DaiMlflowError(
            f"{model_dir}: wheels {missing} are not under artifacts/{PIPELINE_ARTIFACT}; "
            "this is a dai-mlflow bug, please report it"
        )


def find_license_leaks(model_dir: Path, secret: bytes) -> List[Path]:
    """Files under ``model_dir`` whose bytes contain ``secret``, read in blocks (a runtime
    wheel is hundreds of megabytes)."""
    if not secret:
        return []
    return [p for p in sorted(model_dir.rglob("*")) if p.is_file() and _contains(p, secret)]


def _contains(path: Path, secret: bytes) -> bool:
    keep = len(secret) - 1  # a match may straddle blocks: keep the last bytes of the previous
    window = b""
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_SCAN_BLOCK), b""):
            window = (window[-keep:] if keep else b"") + block
            if secret in window:
                return True
    return False


def model_env(staged: StagedModel, env_root: Optional[Path] = None) -> Path:
    """Build or reuse the staged model's own env
    (:func:`dai_mlflow.envs.model_env.ensure_model_env`: the env Spark and the lifecycle entry
    points use for it later).

    Returns:
        The env's python.
    """
    root = str(env_root) if env_root else None
    return ensure_model_env(staged.path, "uv", root, progress=say)


def check_model(staged: StagedModel, env_root: Optional[Path] = None) -> Dict[str, Any]:
    """Load the staged model in its own env and predict on its input example.

    Returns:
        ``columns`` (DAI's output columns), ``contrib_columns`` and row counts.

    Raises:
        ModelCheckError: the env cannot be built, or loading/scoring fails there.
    """
    try:
        python = model_env(staged, env_root)
    except DaiMlflowError as e:
        raise ModelCheckError(f"building the model's env failed: {e}") from e
    root = str(env_root) if env_root else None
    try:
        result = run_program(python, "check", [str(staged.path)], root=root)
    except ModelProgramError as e:
        raise ModelCheckError(
            f"the model failed in its own env (Python {staged.python_version}): {e}; "
            "nothing was logged"
        ) from e
    expected = staged.spec.names
    if sorted(result["scorer_columns"]) != sorted(expected):
        raise ModelCheckError(
            f"signature columns {expected} differ from the scorer's get_column_names() "
            f"{result['scorer_columns']}; example.py and the scorer disagree — re-export the "
            "pipeline"
        )
    if result["default_rows"] != result["rows"]:
        raise ModelCheckError(
            f"the scorer returned {result['default_rows']} rows for {result['rows']} input rows"
        )
    return result


def _finish_mlmodel(staged: StagedModel, output_columns: Sequence[str], run_id: str) -> None:
    """The checked output schema, the pipeline's Python and the run, in one rewrite."""
    from mlflow.models import Model

    mlmodel = staged.path / "MLmodel"
    model = Model.load(str(mlmodel))
    model.signature = build_signature(staged.spec, output_columns)
    # MLflow records the logging interpreter; the model runs on the pipeline's Python.
    model.flavors["python_function"]["python_version"] = staged.python_version
    model.run_id = run_id
    model.artifact_path = MODEL_ARTIFACT_PATH
    model.save(str(mlmodel))


def _tags(staged: StagedModel) -> Dict[str, str]:
    p = staged.pipeline
    notes = "; ".join(staged.requirements.notes)
    return {
        f"{TAG_PREFIX}scorer_module": p.module_name,
        f"{TAG_PREFIX}dai_version": p.dai_version or "unknown",
        f"{TAG_PREFIX}dai_line": p.dai_line,
        f"{TAG_PREFIX}model_python": staged.python_version,
        f"{TAG_PREFIX}requirements_notes": notes[:4900] if notes else "none",
    }


def preflight(request: LogRequest, work: Path) -> ScoringPipeline:
    """Cheap checks before any tracking is touched: license, pipeline, requirements, signature.

    Args:
        request: what to log.
        work: a scratch folder; a zip is extracted under it, once (pass the result on to
            :func:`log_pipeline`).

    Returns:
        The opened pipeline.

    Raises:
        DaiMlflowError: the same one-line errors :func:`log_pipeline` would raise later.
    """
    find_license()
    started = time.monotonic()
    pipeline = open_pipeline(request.pipeline, work / "extracted")
    shared_requirements(sanitize(pipeline, request.policy), pipeline)
    read_input_spec(pipeline)
    find_python(pipeline.python)
    # After the checks: a bad pipeline gets its one error line and nothing else.
    size = sum(p.stat().st_size for p in pipeline.folder.rglob("*") if p.is_file())
    seconds = time.monotonic() - started
    say(f"opened and checked {request.pipeline} ({size / 1e6:.0f} MB) in {seconds:.1f}s")
    return pipeline


def log_pipeline(
    request: LogRequest,
    tracking_ready: Optional[Callable[[], None]] = None,
    pipeline: Optional[ScoringPipeline] = None,
) -> LogResult:
    """Log (and optionally register) a DAI pipeline in the active or a new MLflow run.

    The tracking URI must already be set (see :mod:`dai_mlflow.tracking`). Inside
    ``mlflow run`` the run is the one MLflow created (``MLFLOW_RUN_ID``). The model is staged
    and checked before tracking is touched; ``tracking_ready`` is called just before.

    Args:
        request: what to log.
        tracking_ready: blocks until the tracking store answers (e.g. a bridge starting up).
        pipeline: ``request.pipeline`` already opened by :func:`preflight`.

    Returns:
        The URIs and registry coordinates.

    Raises:
        DaiMlflowError: any expected failure; the run then ends FAILED and nothing is registered.
    """
    import mlflow

    source = find_license()
    export_license_location(source)  # the check runs in another folder: a relative path breaks
    say(f"license: found at {source.describe()} (read at scoring time, never stored)")
    with tempfile.TemporaryDirectory(prefix="dai-mlflow-log-") as tmp:
        started = time.monotonic()
        staged = stage_model(request.pipeline, Path(tmp), request.policy, pipeline)
        say(
            f"pipeline: {staged.pipeline.module_name} (DAI {staged.pipeline.dai_version or '?'}, "
            f"Python {staged.python_version}), staged in {time.monotonic() - started:.1f}s; "
            "checking it in the model's own env"
        )
        # The license scan reads every byte of the model (a gigabyte with a real runtime): it
        # runs while the check waits for its subprocess.
        with ThreadPoolExecutor(max_workers=1) as pool:
            guard = pool.submit(_guard_license, staged.path, source)
            result = check_model(staged, request.env_root)
            say(f"checked: output columns {result['columns']}")
            guard.result()
        if tracking_ready is not None:
            tracking_ready()
        with mlflow.start_run() as run:
            return _log_staged(staged, run.info.run_id, request, tuple(result["columns"]))


def _log_staged(
    staged: StagedModel, run_id: str, request: LogRequest, columns: Tuple[str, ...]
) -> LogResult:
    import mlflow

    _finish_mlmodel(staged, columns, run_id)
    mlflow.set_tags(_tags(staged))
    started = time.monotonic()
    mlflow.log_artifacts(str(staged.path), MODEL_ARTIFACT_PATH)
    say(f"logged the model's files in {time.monotonic() - started:.1f}s")
    runs_uri = f"runs:/{run_id}/{MODEL_ARTIFACT_PATH}"
    if request.model_name is None:
        return LogResult(runs_uri, run_id, runs_uri, output_columns=columns)
    version = mlflow.register_model(runs_uri, request.model_name)
    mlflow.MlflowClient().set_registered_model_alias(
        request.model_name, request.alias, version.version
    )
    say(f"registered {request.model_name} version {version.version} as @{request.alias}")
    return LogResult(
        model_uri=f"models:/{request.model_name}/{version.version}",
        run_id=run_id,
        runs_uri=runs_uri,
        model_name=request.model_name,
        version=str(version.version),
        alias=request.alias,
        output_columns=columns,
    )


def _guard_license(model_dir: Path, source: LicenseSource) -> None:
    leaks = find_license_leaks(model_dir, license_bytes(source))
    if leaks:
        raise LicenseLeakError(
            f"{leaks[0]} contains the Driverless AI license; remove it from the pipeline folder "
            "(licenses are read at scoring time, never stored in a model)"
        )
