"""The real ``mlflow run . -P pipeline=…`` command (a subprocess from venvs/launcher).

Covers, for both DAI lines and all three problems: the run succeeds and prints
``model_uri=<uri>`` last; the version is registered with its alias; the model folder has the
expected layout and env for its line; the model loads in its own env and predicts exactly what
the scorer's own ``score_batch`` returns (contributions included); the license appears nowhere.
Also: a bad pipeline leaves the run FAILED with nothing registered, and the DAI 2.x project env
logs a DAI 1.10 pipeline.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.fixtures_model import (
    LAUNCHER_BIN,
    LoggedDaiModel,
    last_stdout_line,
    license_env_for,
    mlflow_run,
    model_python,
    prefetch_logged_models,
    project_with_env,
    run_child_json,
    run_env,
)
from tests.fixtures_standin import get_standin

pytestmark = pytest.mark.mlflow_run

CASES = [
    (line, problem) for line in ("1.10", "2") for problem in ("regression", "binary", "multiclass")
]
PYTHON = {"1.10": "3.8", "2": "3.11"}
MLFLOW = {"1.10": "mlflow==2.17.2", "2": "mlflow==3.17.2"}

_COMPARE = r"""
import importlib, json, os, sys
import numpy as np, pandas as pd
import mlflow.pyfunc
model_dir, csv, module = sys.argv[1], sys.argv[2], sys.argv[3]
frame = pd.read_csv(csv)
model = mlflow.pyfunc.load_model(model_dir)
schema = model.metadata.get_input_schema()
inputs = frame[schema.input_names()].copy()
# MLflow refuses int64 -> double as lossy: a caller follows the signature and passes floats.
for spec in schema.inputs:
    if spec.type.name == "double":
        inputs[spec.name] = inputs[spec.name].astype("float64")
got = model.predict(inputs)
got_c = model.predict(inputs, params={"pred_contribs": True})
got_m = model.predict(inputs, params={"output_margin": True})
os.chdir(os.environ["WORKDIR"])
scorer = importlib.import_module(module).Scorer()
ref = scorer.score_batch(frame[list(scorer.get_column_names())])
ref_c = scorer.score_batch(frame[list(scorer.get_column_names())], pred_contribs=True)
ref_m = scorer.score_batch(frame[list(scorer.get_column_names())], output_margin=True)
out = {}
for name, a, b in (("default", got, ref), ("contribs", got_c, ref_c), ("margin", got_m, ref_m)):
    out[name] = {
        "columns": [list(map(str, a.columns)), list(map(str, b.columns))],
        "rows": [len(a), len(b)],
        "max_abs_diff": float(np.nanmax(np.abs(a.to_numpy(float) - b.to_numpy(float)))),
        "nan_mismatch": bool((np.isnan(a.to_numpy(float)) != np.isnan(b.to_numpy(float))).any()),
    }
print("RESULT=" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def _all_logged() -> None:
    """Log the six cases up front, a few at once (each run is partly waiting)."""
    prefetch_logged_models(CASES)


@pytest.fixture(scope="module", params=CASES, ids=[f"{a}-{b}" for a, b in CASES])
def case(request, logged_model, _all_logged) -> LoggedDaiModel:
    return logged_model(*request.param)


def test_run_prints_model_uri_last_and_registers_alias(case: LoggedDaiModel) -> None:
    import mlflow

    assert last_stdout_line(case.stdout.read_text()) == f"model_uri={case.model_uri}"
    client = mlflow.MlflowClient(tracking_uri=case.tracking_uri, registry_uri=case.tracking_uri)
    version = client.get_model_version_by_alias(case.model_name, case.alias)
    assert case.model_uri == f"models:/{case.model_name}/{version.version}"
    assert client.get_run(case.run_id).info.status == "FINISHED"


def test_model_layout_and_env_fit_the_line(case: LoggedDaiModel) -> None:
    line = case.build.dai_line
    d = case.local_dir
    stored = d / "artifacts" / "scoring-pipeline"
    assert (stored / case.build.experiment_wheel).is_file()
    assert not any(stored.glob("*.sig"))
    env = yaml.safe_load((d / "python_env.yaml").read_text())
    assert env["python"].startswith(PYTHON[line] + ".")
    reqs = (d / "requirements.txt").read_text().splitlines()
    assert MLFLOW[line] in reqs
    carried = [r for r in reqs if r.startswith("./code/")]
    wheel_lines = [r for r in reqs if r.endswith(".whl") and r not in carried]
    assert wheel_lines
    assert all(r.startswith("./artifacts/scoring-pipeline/") for r in wheel_lines)
    # Every model carries the hooks (docs/model-hooks.md); Python 3.8 models also the uvicorn
    # shim MLflow 3's `models serve` needs; 3.11 ones don't.
    names = sorted(Path(r).name.split("-")[0] for r in carried)
    shim = ["dai_mlflow_serving_shim"] if line == "1.10" else []
    assert names == ["dai_mlflow_model_hooks", *shim]
    assert all((d / r).is_file() for r in carried)
    assert not any("h2o4gpu" in r or r.startswith("pyorc") for r in reqs)
    assert ("importlib-resources==5.12.0" in reqs) == (line == "1.10")
    assert "-c constraints.txt" in reqs
    mlmodel = yaml.safe_load((d / "MLmodel").read_text())
    assert (
        mlmodel["flavors"]["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    )
    assert not list(d.rglob("*.pkl")), "models-from-code: no pickle in the model"


def test_predictions_equal_score_batch(case: LoggedDaiModel, tmp_path: Path) -> None:
    python = model_python(case)
    env = {**run_env(case.license_env), "WORKDIR": str(tmp_path)}
    cmd = [python, "-c", _COMPARE, case.local_dir, case.build.holdout_csv, case.build.module_name]
    result = run_child_json(cmd, tmp_path, env, "RESULT")
    for kind in ("default", "contribs", "margin"):
        r = result[kind]
        assert r["columns"][0] == r["columns"][1], kind
        assert r["rows"][0] == r["rows"][1] > 0, kind
        assert not r["nan_mismatch"], kind
        assert r["max_abs_diff"] <= 1e-9, (kind, r["max_abs_diff"])
    assert any(c.startswith("contrib_") for c in result["contribs"]["columns"][0])


def test_license_lands_nowhere(case: LoggedDaiModel) -> None:
    raw = case.build.license_path.read_bytes().strip()
    secrets = [raw, base64.b64encode(case.build.license_path.read_bytes())]
    # The signature line is what makes a license unique (its header line is boilerplate).
    secrets += [ln.encode() for ln in raw.decode().splitlines() if ln.startswith("signature:")]
    roots = [case.local_dir.parent.parent, case.stdout, case.stderr]
    store = Path(case.tracking_uri[len("sqlite:///") :])
    roots.append(store)
    hits = []
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            data = f.read_bytes()
            hits += [str(f) for s in secrets if s and s in data]
    assert not hits


def test_bad_pipeline_fails_the_run_and_registers_nothing(tmp_path: Path) -> None:
    import mlflow

    build = get_standin("1.10", "binary")
    bad = tmp_path / "scorer.zip"
    bad.write_bytes(build.zip_path.read_bytes()[:500])
    proc = mlflow_run(
        {"pipeline": str(bad), "model_name": "never_registered"},
        cwd=tmp_path / "cwd",
        env=run_env(license_env_for(build, "1.10")),
        out_dir=tmp_path,
    )
    assert proc.returncode != 0
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1
    assert str(bad) in errors[0]
    assert "re-download" in errors[0]
    store = f"sqlite:///{tmp_path / 'cwd' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert client.search_registered_models() == []


def test_dai_110_project_env_logs_a_dai_2_pipeline_through_the_bridge(tmp_path: Path) -> None:
    """The Python 3.8 / mlflow 2.17 project env (``make use-line LINE=1.10``) logs a Python 3.11
    model into the default store, which its MLflow cannot open: through the tracking bridge."""
    build = get_standin("2", "regression")
    proc = mlflow_run(
        {"pipeline": str(build.folder), "model_name": "from_the_110_env"},
        cwd=tmp_path,
        env=run_env(license_env_for(build, "2")),
        out_dir=tmp_path / "out",
        project=project_with_env("1.10"),
    )
    last = last_stdout_line(proc.stdout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert last.startswith("model_uri=models:/from_the_110_env/1"), proc.stdout[-2000:]
    assert "through a loopback mlflow server" in proc.stderr, proc.stderr[-2000:]
    import mlflow

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    (version,) = client.search_model_versions("name='from_the_110_env'")
    run = client.get_run(version.run_id)
    assert run.info.status == "FINISHED"
    model_dir = Path(run.info.artifact_uri) / "model"
    env = yaml.safe_load((model_dir / "python_env.yaml").read_text())
    assert env["python"].startswith("3.11.")
    assert "mlflow==3.17.2" in (model_dir / "requirements.txt").read_text().splitlines()


@pytest.mark.parametrize("line", ["1.10", "2"])
def test_mlflow_restores_the_model_env_itself(logged_model, line: str, tmp_path: Path) -> None:
    """MLflow's own env restore (uv, as serving and spark_udf do) installs the bundled wheels
    from ./artifacts/scoring-pipeline and scores."""
    import pandas as pd

    case = logged_model(line, "binary")
    frame = pd.read_csv(case.build.sample_input_csv).head(20)
    types = yaml.safe_load((case.local_dir / "MLmodel").read_text())["signature"]["inputs"]
    for spec in json.loads(types):
        if spec["type"] == "double":
            frame[spec["name"]] = frame[spec["name"]].astype("float64")
    split = json.loads(frame.to_json(orient="split", index=False))
    (tmp_path / "input.json").write_text(json.dumps({"dataframe_split": split}))
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [
            str(LAUNCHER_BIN / "mlflow"),
            "models",
            "predict",
            "-m",
            str(case.local_dir),
            "-i",
            str(tmp_path / "input.json"),
            "-t",
            "json",
            "-o",
            str(out),
            "--env-manager",
            "uv",
        ],
        cwd=str(tmp_path),
        env=run_env(case.license_env),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predictions = json.loads(out.read_text())["predictions"]
    assert len(predictions) == len(frame)
    assert set(predictions[0]) == {f"{case.build.target}.{label}" for label in case.build.labels}
