"""A new model of a seen DAI line reuses that line's env; each model scores with its own code.

On stand-in models logged by the real ``mlflow run``:

- a second model of a seen line builds no new env: not the model env Spark executors build
  (``dai_mlflow.envs.model_env``, also the log-time validation env), not ``venvs/spark_inference``
  (``make spark-venv``);
- two models whose experiment wheels share a file name but not their contents (MLflow #10525)
  give each their own predictions: in one process, and one after the other through the same
  Spark uv env;
- changing a shared pin builds a new env;
- the experiment wheel is extracted once per content hash, atomically, by concurrent loaders.
"""

from __future__ import annotations

import subprocess
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List

import pandas as pd
import pytest

from dai_mlflow.envs.model_env import ensure_model_env, model_env_dir
from dai_mlflow.log.pipeline import open_pipeline
from dai_mlflow.log.requirements import sanitize, shared_requirements
from dai_mlflow.model.experiment import extract_wheel, file_sha256
from dai_mlflow.spark import score_to_path
from tests.fixtures_model import (
    MODEL_ENV_ROOT,
    LoggedDaiModel,
    model_python,
    run_child_json,
    run_env,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE = REPO_ROOT / "tests" / ".cache"
TOLERANCE = 1e-9


def _dai_columns(frame: pd.DataFrame) -> List[str]:
    return [c for c in frame.columns if c != "row_id"]


def _with_ids(csv: Path, folder: Path) -> Path:
    """The sample input plus a ``row_id`` column (Spark output order is not the input's)."""
    frame = pd.read_csv(csv)
    frame.insert(0, "row_id", range(len(frame)))
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "input.csv", index=False)
    return folder / "input.csv"


def _assert_scores(got: pd.DataFrame, expected: pd.DataFrame) -> None:
    if "row_id" in got.columns:
        got = got.sort_values("row_id").reset_index(drop=True)
    columns = _dai_columns(expected)
    assert len(got) == len(expected) > 0
    assert list(got[columns].columns) == columns
    diff = (got[columns].to_numpy(float) - expected[columns].to_numpy(float)).__abs__()
    assert float(diff.max()) <= TOLERANCE


def _env_folders(root: Path) -> List[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("model-py") and p.is_dir())


# ------------------------------------------------------------------------------ quick checks


def test_the_experiment_wheel_is_not_a_model_requirement(standin, tmp_path: Path) -> None:
    build = standin("1.10", "binary")
    pipeline = open_pipeline(build.zip_path, tmp_path)
    full = sanitize(pipeline)
    shared = shared_requirements(full, pipeline)
    assert any(build.experiment_wheel in line for line in full.requirements)
    assert not any(build.experiment_wheel in line for line in shared.requirements)
    assert any(build.core_wheel in line for line in shared.requirements)
    assert build.experiment_wheel in shared.wheels  # still stored with the model
    assert any("loaded from the model's artifacts" in note for note in shared.notes)


def test_an_env_check_hashes_each_wheel_once(tmp_path: Path, monkeypatch) -> None:
    """The env's folder name and its build share one key: a gigabyte runtime wheel is read once
    per ensure_model_env, not once for the name and again for the build."""
    from dai_mlflow.envs import pythons, venvs

    model = tmp_path / "model"
    model.mkdir()
    (model / "python_env.yaml").write_text(
        f'python: "{pythons.current().version}"\ndependencies: ["-r requirements.txt"]\n'
    )
    (model / "requirements.txt").write_text("./runtime-1.0-py3-none-any.whl\n")
    (model / "runtime-1.0-py3-none-any.whl").write_bytes(b"not a real wheel")
    hashed: List[str] = []

    def counting_sha256(path: Path) -> str:
        hashed.append(Path(path).name)
        return file_sha256(path)

    monkeypatch.setattr(venvs, "file_sha256", counting_sha256)
    monkeypatch.setattr(venvs, "is_current", lambda dest, key: True)  # as if built before
    ensure_model_env(model, "uv", str(tmp_path / "envs"))
    assert hashed.count("runtime-1.0-py3-none-any.whl") == 1


def test_concurrent_extraction_is_atomic_and_keyed_by_content(standin, tmp_path: Path) -> None:
    build = standin("1.10", "binary")
    wheel = build.folder / build.experiment_wheel
    digest = file_sha256(wheel)
    root = tmp_path / "cache"
    root.mkdir()
    with ProcessPoolExecutor(max_workers=4) as pool:
        paths = list(pool.map(extract_wheel, [wheel] * 8, [digest] * 8, [root] * 8))
    assert {str(p) for p in paths} == {str(root / digest)}
    assert sorted(p.name for p in root.iterdir()) == [digest]  # no temp folders left
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            assert (root / digest / name).read_bytes() == zf.read(name)


# ------------------------------------------------------------------------------ envs


@pytest.mark.mlflow_run
@pytest.mark.venv
def test_a_second_model_of_a_seen_line_builds_no_new_env(
    logged_model, tmp_path: Path, shifted_pin
) -> None:
    first = logged_model("1.10", "binary")
    second = logged_model("1.10", "regression")
    # The log-time validation env is the one Spark executors use, and it is shared.
    assert model_python(first) == model_python(second)
    for model in (first, second):
        text = (model.local_dir / "requirements.txt").read_text()
        assert model.build.experiment_wheel not in text
        shipped = model.local_dir / "artifacts" / "scoring-pipeline" / model.build.experiment_wheel
        assert shipped.is_file()
    # Built for the first model, reused for the second; a changed shared pin is another env.
    root = tmp_path / "envs"
    ensure_model_env(first.local_dir, "uv", str(root))
    after_first = _env_folders(root)
    assert after_first == [model_env_dir(first.local_dir, "uv", str(root)).name]
    ensure_model_env(second.local_dir, "uv", str(root))
    assert _env_folders(root) == after_first
    ensure_model_env(shifted_pin(first.local_dir, tmp_path / "shifted"), "uv", str(root))
    after_shift = _env_folders(root)
    assert len(after_shift) == 2
    assert set(after_first) < set(after_shift)


@pytest.mark.mlflow_run
@pytest.mark.venv
def test_make_spark_venv_for_a_second_model_reuses_the_venv(
    logged_model, expected_scores, tmp_path: Path
) -> None:
    first = logged_model("1.10", "binary")
    second = logged_model("1.10", "regression")
    venvs = CACHE / "switch-venvs"  # DAI_MLFLOW_VENVS: the launcher's venvs/ for these tests
    script = REPO_ROOT / "launchers" / "build_spark_venv.sh"

    def build(model: LoggedDaiModel) -> subprocess.CompletedProcess:
        env = run_env({"DAI_MLFLOW_VENVS": str(venvs), "MLFLOW_TRACKING_URI": model.tracking_uri})
        return subprocess.run(
            [str(script), model.model_uri], env=env, capture_output=True, text=True, timeout=900
        )

    proc = build(first)
    assert proc.returncode == 0, proc.stderr[-2000:]
    before = sorted(p.name for p in venvs.iterdir())
    stamp = (venvs / "spark_inference" / ".dai-mlflow-venv.json").read_text()
    proc = build(second)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("reused "), proc.stdout
    assert sorted(p.name for p in venvs.iterdir()) == before
    assert (venvs / "spark_inference" / ".dai-mlflow-venv.json").read_text() == stamp
    # ... and the reused venv scores the second model with its own code (env manager local).
    python = venvs / "spark_inference" / "bin" / "python"
    out = tmp_path / "scored"
    env = run_env({"MLFLOW_TRACKING_URI": second.tracking_uri, **second.license_env})
    env["DAI_MLFLOW_EXPERIMENT_CACHE"] = str(tmp_path / "experiments")
    cmd = [str(python), str(REPO_ROOT / "spark_inference" / "score.py"), "--master", "local[1]"]
    csv = _with_ids(second.build.sample_input_csv, tmp_path)
    cmd += ["--model-uri", second.model_uri, "--input", str(csv)]
    proc = subprocess.run(
        [*cmd, "--output", str(out)], env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = expected_scores(second, second.build.sample_input_csv)
    _assert_scores(pd.read_parquet(out), expected)


# ------------------------------------------------------------------------------ same name


_PREDICT_BOTH = r"""
import json, sys
import pandas as pd
import mlflow.pyfunc
frame = pd.read_csv(sys.argv[1])
for name in frame.columns:
    if frame[name].dtype.kind in "iu":
        frame[name] = frame[name].astype("float64")
out = {}
for model_dir in sys.argv[2:]:
    out[model_dir] = mlflow.pyfunc.load_model(model_dir).predict(frame).to_dict("list")
print("PREDICTIONS=" + json.dumps(out))
"""


@pytest.mark.mlflow_run
@pytest.mark.venv
@pytest.mark.spark
def test_same_wheel_name_other_contents_score_their_own_model(
    spark, logged_model, variant_model, expected_scores, tmp_path: Path, monkeypatch
) -> None:
    original = logged_model("1.10", "binary")
    variant = variant_model("1.10", "binary")
    assert original.build.experiment_wheel == variant.build.experiment_wheel
    wheels = [
        m.local_dir / "artifacts" / "scoring-pipeline" / m.build.experiment_wheel
        for m in (original, variant)
    ]
    digests = [file_sha256(w) for w in wheels]
    assert digests[0] != digests[1]
    csv = original.build.sample_input_csv
    expected = [expected_scores(m, csv) for m in (original, variant)]
    assert float((expected[0].iloc[:, 1] - expected[1].iloc[:, 1]).abs().max()) > 1e-3

    # One process, one env (the shared one), both models: each with its own code.
    python = model_python(original)
    assert python == model_python(variant)
    cache = tmp_path / "experiments"
    env = run_env({**original.license_env, "DAI_MLFLOW_EXPERIMENT_CACHE": str(cache)})
    cmd = [python, "-c", _PREDICT_BOTH, csv, original.local_dir, variant.local_dir]
    got = run_child_json(cmd, tmp_path, env, "PREDICTIONS")
    for model, want in zip((original, variant), expected):
        _assert_scores(pd.DataFrame(got[str(model.local_dir)]), want)
    assert sorted(p.name for p in cache.iterdir()) == sorted(digests)

    # Spark uv, one after the other: the same env and the same Python workers (whose model
    # servers keep the first model loaded), each model's own predictions.
    monkeypatch.setenv("DAI_MLFLOW_ENV_ROOT", str(MODEL_ENV_ROOT))
    monkeypatch.setenv("DAI_MLFLOW_EXPERIMENT_CACHE", str(cache))
    spark_csv = _with_ids(csv, tmp_path / "spark-input")
    folders = None
    for model, want in zip((original, variant), expected):
        out = tmp_path / f"spark-{model.model_name}"
        score_to_path(
            spark, str(model.local_dir), str(spark_csv), str(out), "uv", env=model.license_env
        )
        _assert_scores(pd.read_parquet(out), want)
        now = _env_folders(MODEL_ENV_ROOT)
        assert folders is None or now == folders  # the variant built no env
        folders = now
