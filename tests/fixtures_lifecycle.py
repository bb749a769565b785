"""Fixtures of the lifecycle tests (loaded by tests/conftest.py).

- ``worse_model_dir() -> Path``: an honestly worse DAI 1.10 binary model. It is the stand-in
  builder's own pipeline (``build_pipeline``, seed 1), trained on 60 rows instead of 2 000 (the
  builder's ``N_TRAIN``, set for that one build; the builder's code is not changed): same
  columns, same DAI shape, a real GLM with a higher holdout log loss and a lower AUC. Logged once
  with ``dai_mlflow.log.run.log_pipeline`` (validated in its own env like any model) into a cache
  store under ``tests/.cache/lifecycle/``, keyed like the ``logged_model`` fixtures.
- ``broken_model_copy(src, dst) -> Path``: a copy of a logged model folder whose scorer answers
  NaN for every row (the fitted model in its experiment wheel gets a NaN bias): it loads, serves
  and answers HTTP 200, and is wrong. What a deploy's smoke test is there to stop.
- ``lifecycle_store`` (function scope): a throwaway sqlite tracking store in ``tmp_path``
  (``MLFLOW_TRACKING_URI`` set for the test), the 1.10 stand-in license in the environment, model
  envs shared with the other tests; ``register(model_dir, name, alias)`` copies a logged model
  folder into a new run of that store and registers it.
- Helpers of the stage tests (``tests/lifecycle/test_validate.py``, ``test_batch.py``,
  ``test_monitor.py``): ``holdout_csv()``, ``license_text()``, ``download_run(run_id, dst)``,
  ``check_report(folder, name, pngs)``, and the model name and dates they share.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from filelock import FileLock

from dai_mlflow.standin import build_pipeline, builder_fingerprint, load_build
from tests.fixtures_model import MODEL_ENV_ROOT, run_child_json, run_env, sources_key
from tests.fixtures_standin import get_standin

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / "tests" / ".cache" / "lifecycle"
LAUNCHER_PYTHON = REPO_ROOT / "venvs" / "launcher" / "bin" / "python"
WORSE_TRAIN_ROWS = 60
WORSE_SEED = 1
# The registered model and the batch dates of the stage tests.
NAME = "dai_churn"
DAY = "2026-11-20"
SHIFTED_DAY = "2026-11-21"

_LOG = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from dai_mlflow.log.run import LogRequest, log_pipeline
    result = log_pipeline(LogRequest(pipeline=Path(sys.argv[1])))
    import mlflow
    run = mlflow.MlflowClient().get_run(result.run_id)
    print("LOGGED=" + json.dumps({"local_dir": run.info.artifact_uri + "/model"}))
    """
)


def _build_worse(out_dir: Path):
    """The stand-in pipeline trained on WORSE_TRAIN_ROWS rows (cached by builder fingerprint)."""
    import dai_mlflow.standin.builder as builder

    build = load_build(out_dir)
    if build is not None:
        return build
    assert hasattr(builder, "N_TRAIN"), "the stand-in builder no longer has N_TRAIN"
    saved = builder.N_TRAIN
    builder.N_TRAIN = WORSE_TRAIN_ROWS
    try:
        return build_pipeline(out_dir, "1.10", "binary", seed=WORSE_SEED)
    finally:
        builder.N_TRAIN = saved


def get_worse_model_dir() -> Path:
    """Log (or reuse) the worse model; return its logged model folder."""
    folder = CACHE / f"worse-{sources_key()}-{builder_fingerprint()}"
    folder.parent.mkdir(parents=True, exist_ok=True)
    result = folder / "local_dir.txt"
    with FileLock(str(folder) + ".lock"):
        if not result.is_file():
            build = _build_worse(folder / "standin")
            store = folder / "store"
            store.mkdir(parents=True, exist_ok=True)
            env = run_env(
                {
                    **build.license_env(),
                    "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}",
                    "PYTHONPATH": str(REPO_ROOT),
                }
            )
            cmd = [LAUNCHER_PYTHON, "-c", _LOG, build.zip_path]
            local = run_child_json(cmd, store, env, "LOGGED", timeout=900)["local_dir"]
            result.write_text(local.replace("file://", ""))
    return Path(result.read_text().strip())


@pytest.fixture(scope="session")
def worse_model_dir() -> Path:
    """Folder of the logged worse 1.10 binary model."""
    return get_worse_model_dir()


def broken_model_copy(src: Path, dst: Path) -> Path:
    """Copy the logged model ``src`` to ``dst`` with a NaN bias in its fitted model (see above)."""
    import shutil
    import zipfile

    shutil.copytree(src, dst)
    (wheel,) = (dst / "artifacts" / "scoring-pipeline").glob("scoring_h2oai_experiment_*.whl")
    patched = wheel.with_suffix(".patched")
    with zipfile.ZipFile(wheel) as zin, zipfile.ZipFile(patched, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename.endswith("/fitted_model.json"):
                spec = json.loads(data)
                spec["bias"] = [float("nan")] * len(spec["bias"])
                data = json.dumps(spec).encode()
            zout.writestr(item, data)
    patched.replace(wheel)
    return dst


@dataclass
class LifecycleStore:
    """A throwaway tracking store and registry for one test."""

    tracking_uri: str
    root: Path

    def client(self):  # mlflow.MlflowClient
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)

    def register(self, model_dir: Path, name: str, alias: Optional[str] = None) -> str:
        """Copy a logged model folder into a new run, register it, set ``alias``; the version."""
        import mlflow

        with mlflow.start_run() as run:
            mlflow.log_artifacts(str(model_dir), "model")
        mv = mlflow.register_model(f"runs:/{run.info.run_id}/model", name)
        if alias:
            self.client().set_registered_model_alias(name, alias, mv.version)
        return str(mv.version)

    def alias(self, name: str, alias: str) -> Optional[str]:
        """The version ``alias`` points at, or None."""
        try:
            return str(self.client().get_model_version_by_alias(name, alias).version)
        except Exception:
            return None

    def aliases(self, name: str) -> Dict[str, str]:
        model = self.client().get_registered_model(name)
        return {k: str(v) for k, v in (model.aliases or {}).items()}


@pytest.fixture
def lifecycle_store(tmp_path, monkeypatch) -> LifecycleStore:
    """A fresh sqlite store in tmp_path, the stand-in license and the shared model envs."""
    import mlflow

    root = tmp_path / "store"
    root.mkdir()
    uri = f"sqlite:///{root / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DAI_MLFLOW_ENV_ROOT", str(MODEL_ENV_ROOT))
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
    monkeypatch.setenv(
        "DRIVERLESS_AI_LICENSE_FILE", str(get_standin("1.10", "binary").license_path)
    )
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.chdir(tmp_path)
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    yield LifecycleStore(uri, root)
    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(previous[0])
    mlflow.set_registry_uri(previous[1])


# ----------------------------------------------------------------------------- stage test helpers
def holdout_csv() -> Path:
    """The 1.10 binary stand-in's labelled holdout."""
    return get_standin("1.10", "binary").holdout_csv


def license_text() -> str:
    """The 1.10 stand-in's license (must never appear in a run, a report or a sample)."""
    return get_standin("1.10", "binary").license_path.read_text().strip()


def download_run(run_id: str, dst: Path) -> Path:
    """Every artifact of a run, downloaded into ``dst``."""
    import mlflow.artifacts

    return Path(mlflow.artifacts.download_artifacts(run_id=run_id, dst_path=str(dst)))


def check_report(folder: Path, report_name: str, pngs: List[str]) -> str:
    """The report and its plots are there; the plots are sensible PNGs, all embedded in the
    HTML, which references nothing remote. Returns the HTML."""
    # Imported here: tests.fixtures_reports is a plugin loaded after this one (assert rewriting).
    from tests.fixtures_reports import assert_sensible_png, embedded_pngs, remote_references

    page = (folder / report_name).read_text(encoding="utf-8")
    assert remote_references(page) == []
    embedded = embedded_pngs(page)
    for rel in pngs:
        data = (folder / "plots" / rel).read_bytes()
        assert_sensible_png(data)
        assert data in embedded, rel
    return page
