"""The stand-in pipeline builder, without building venvs: layout, wheels, requirement files,
determinism, the license check, and the model scored in-process by the runtime's engine."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import re
import shutil
import subprocess
import sys
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.standin import (
    DAI_LINES,
    PROBLEMS,
    StandinError,
    build_pipeline,
    experiment_key,
    load_build,
    module_name_for,
)
from dai_mlflow.standin.runtime.h2oaicore import engine, licensing

REPO = Path(__file__).resolve().parents[2]
LINES = sorted(DAI_LINES)
CASES = [(v, p) for v in LINES for p in PROBLEMS]
AWKWARD = {" ", "?", "'", '"', "."}


def _files(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize(("dai_version", "problem"), CASES)
def test_layout_names_and_wheel_tags(standin, dai_version, problem):
    build = standin(dai_version, problem)
    line = DAI_LINES[dai_version]
    with zipfile.ZipFile(build.zip_path) as zf:
        names = zf.namelist()
        modes = {i.filename: i.external_attr >> 16 for i in zf.infolist()}
    assert names == sorted(names)
    assert modes["scoring-pipeline/run_example.sh"] == 0o100755
    assert modes["scoring-pipeline/requirements.txt"] == 0o100644
    assert all(n.startswith("scoring-pipeline/") for n in names)
    key = build.experiment_key
    module = "scoring_h2oai_experiment_" + key.replace("-", "_")
    assert build.module_name == module
    expected = {
        f"{module}-1.0.0-py3-none-any.whl",
        f"h2oaicore-{line.dai_version}-{line.cp_tag}-{line.cp_tag}-linux_x86_64.whl",
        f"h2o4gpu-{line.h2o4gpu_version}-{line.cp_tag}-{line.cp_tag}-linux_x86_64.whl",
        "requirements.txt",
        "req_constraints_deps.txt",
        "example.py",
        "run_example.sh",
        "README.txt",
        "training_data_column_stats.json",
        f"h2oai_experiment_summary_{key}.zip",
    }
    assert {n.split("/", 1)[1] for n in names} - {""} == expected
    assert {p.name for p in build.folder.iterdir()} == expected
    # The license sits next to the zip, never inside it.
    assert build.license_path.parent == build.zip_path.parent
    assert not any("license" in n.lower() for n in names)
    assert build.core_wheel.startswith(f"h2oaicore-{'1.10.' if dai_version == '1.10' else '2.'}")
    assert f"-{'cp38' if dai_version == '1.10' else 'cp311'}-" in build.core_wheel


def _wheel_meta(path: Path) -> tuple:
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        dist = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA")).rsplit("/", 1)[0]
        meta = zf.read(f"{dist}/METADATA").decode()
        wheel = zf.read(f"{dist}/WHEEL").decode()
        record = zf.read(f"{dist}/RECORD").decode()
        contents = {i.filename: zf.read(i) for i in infos}
    return infos, meta, wheel, record, contents


@pytest.mark.parametrize("dai_version", LINES)
def test_wheels_are_valid_and_reproducible_archives(standin, dai_version):
    build = standin(dai_version, "binary")
    line = DAI_LINES[dai_version]
    for wheel_name in (build.experiment_wheel, build.core_wheel, build.h2o4gpu_wheel):
        infos, meta, wheel, record, contents = _wheel_meta(build.folder / wheel_name)
        tag = "-".join(wheel_name[: -len(".whl")].split("-")[2:])
        assert f"Tag: {tag}\n" in wheel
        assert meta.startswith("Metadata-Version: 2.1\n")
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
        assert all((i.external_attr >> 16) == 0o100644 for i in infos)
        rows = list(csv.reader(record.splitlines()))
        assert {r[0] for r in rows} == set(contents)
        for name, digest, size in rows:
            if name.endswith("RECORD"):
                assert digest == size == ""
                continue
            raw = base64.urlsafe_b64encode(hashlib.sha256(contents[name]).digest()).rstrip(b"=")
            assert digest == "sha256=" + raw.decode()
            assert int(size) == len(contents[name])
    _, meta, _, _, contents = _wheel_meta(build.folder / build.experiment_wheel)
    assert f"Requires-Dist: h2oaicore=={line.dai_version}\n" in meta
    module = build.module_name
    assert {f"{module}/__init__.py", f"{module}/scorer.py", f"{module}/fitted_model.json"} <= set(
        contents
    )
    assert not any(n.endswith((".pickle", ".pkl")) for n in contents), "JSON, never pickle"
    _, meta, *_ = _wheel_meta(build.folder / build.core_wheel)
    assert f"Requires-Python: =={line.python}.*" in meta
    assert f"Requires-Dist: {line.pin('numpy')}" in meta


@pytest.mark.parametrize("dai_version", LINES)
def test_requirements_mix_wheels_pins_and_must_drop_lines(standin, dai_version):
    build = standin(dai_version, "regression")
    line = DAI_LINES[dai_version]
    text = (build.folder / "requirements.txt").read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    wheels = [ln for ln in lines if ln.endswith(".whl")]
    pins = [ln for ln in lines if "==" in ln]
    assert set(wheels) == {build.experiment_wheel, build.core_wheel, build.h2o4gpu_wheel}
    assert [ln for ln in lines if ln not in wheels and ln not in pins] == []  # nothing else
    assert line.pyorc_pin in pins
    assert line.pin("numpy") in pins
    assert line.pin("pandas") in pins
    if dai_version == "1.10":
        assert "numpy==1.22.0" in pins
        assert "pandas==1.2.5" in pins
    assert len(lines) > len(set(lines)), "exported files repeat pins; the stand-in does too"
    constraints = (build.folder / "req_constraints_deps.txt").read_text().splitlines()
    for pin in pins:
        if not pin.startswith("pyorc"):
            assert pin in constraints
    assert any(c.startswith("scikit-learn==") for c in constraints)
    installable = build.installable_requirements()
    assert not any(ln.startswith(("h2o4gpu", "pyorc")) for ln in installable)
    assert build.experiment_wheel in installable


@pytest.mark.parametrize(("dai_version", "problem"), CASES)
def test_data_files_stats_summary_and_example(standin, dai_version, problem):
    build = standin(dai_version, problem)
    sample = pd.read_csv(build.sample_input_csv)
    holdout = pd.read_csv(build.holdout_csv)
    assert list(sample.columns) == list(build.input_columns)
    assert list(holdout.columns) == [*build.input_columns, build.target]
    assert len(sample) >= 200
    assert sample.isna().any().sum() >= 5, "most input columns have missing values"
    names = "".join(build.input_columns)
    assert set(names) >= AWKWARD
    assert any(c[0].isdigit() for c in build.input_columns)
    kinds = {pd.api.types.is_numeric_dtype(t) for t in sample.dtypes}
    assert kinds == {True, False}, "numeric and text columns"
    stats = json.loads((build.folder / "training_data_column_stats.json").read_text())
    assert list(stats) == list(build.input_columns)
    for entry in stats.values():
        assert entry["data_type"] in ("real", "int", "str")
        assert entry["data"]
        assert ("mean" in entry and "std" in entry) or "levels" in entry
    assert {e["data_type"] for e in stats.values()} == {"real", "int", "str"}
    summary_zip = build.folder / f"h2oai_experiment_summary_{build.experiment_key}.zip"
    with zipfile.ZipFile(summary_zip) as zf:
        summary = json.loads(zf.read("summary.json"))
    assert summary["target"] == build.target
    assert summary["problem_type"] == problem
    example = (build.folder / "example.py").read_text()
    compile(example, "example.py", "exec")
    assert f"from {build.module_name} import Scorer" in example
    assert "score_batch(" in example
    assert ".score([" in example
    for column in build.input_columns:
        assert repr(column) in example, "the header lists every input column"
    readme = (build.folder / "README.txt").read_text()
    assert "stand-in" in readme
    assert "contrib_bias.<label>" in readme, "the multiclass contribution scheme is documented"


def test_two_builds_are_byte_identical(tmp_path):
    for dai_version, problem in [("1.10", "multiclass"), ("2", "binary")]:
        a = build_pipeline(tmp_path / f"a{dai_version}", dai_version, problem)
        b = build_pipeline(tmp_path / f"b{dai_version}", dai_version, problem)
        assert a.zip_path.read_bytes() == b.zip_path.read_bytes()
        assert _files(a.folder) == _files(b.folder)
        for name in ("sample_input.csv", "holdout.csv", "license.sig"):
            assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes()
        # A rebuild into the same folder gives the same bytes again.
        before = a.zip_path.read_bytes()
        assert build_pipeline(a.out_dir, dai_version, problem).zip_path.read_bytes() == before
    other = build_pipeline(tmp_path / "seed1", "2", "binary", seed=1)
    assert other.experiment_key != b.experiment_key
    assert other.zip_path.read_bytes() != b.zip_path.read_bytes()


def test_heavy_runtime_is_shared_by_experiments_of_a_dai_version(tmp_path):
    """--runtime-mb/--runtime-files: blobs and modules in h2oaicore, the same bytes for every
    experiment of one DAI version, other bytes for another version; built through the CLI."""

    def _cli(out: Path, *args: str) -> Path:
        proc = subprocess.run(
            [sys.executable, "-m", "dai_mlflow.standin", "--out", str(out), *args,
             "--runtime-mb", "2", "--runtime-files", "50"],
            capture_output=True, text=True, cwd=REPO, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        build = load_build(out)
        assert build is not None
        assert (build.runtime_mb, build.runtime_files) == (2, 50)
        return build.folder / build.core_wheel

    a = _cli(tmp_path / "a", "--dai-version", "2", "--problem", "binary")
    b = _cli(tmp_path / "b", "--dai-version", "2", "--problem", "regression", "--seed", "3")
    other = _cli(tmp_path / "c", "--dai-version", "1.10", "--problem", "binary")
    assert a.read_bytes() == b.read_bytes()
    infos, _, _, record, contents = _wheel_meta(a)
    blobs = [n for n in contents if n.endswith(".so")]
    modules = [n for n in contents if n.startswith("h2oaicore/generated/")]
    assert sum(len(contents[n]) for n in blobs) == 2 << 20
    assert len(modules) == 50
    assert len(zlib.compress(contents[blobs[0]], 1)) > 0.99 * len(contents[blobs[0]])
    assert infos[-1].filename.endswith(".dist-info/RECORD")  # written last, as wheel tools do
    for name, digest, size in csv.reader(record.splitlines()):
        if not name.endswith("RECORD"):
            raw = base64.urlsafe_b64encode(hashlib.sha256(contents[name]).digest()).rstrip(b"=")
            assert (digest, int(size)) == ("sha256=" + raw.decode(), len(contents[name]))
    with zipfile.ZipFile(other) as zf:
        other_blob = zf.read(blobs[0])
    assert other_blob != contents[blobs[0]]
    with pytest.raises(StandinError, match="0 or more"):
        build_pipeline(tmp_path / "bad", "2", "binary", runtime_mb=-1)


def test_experiment_key_is_deterministic_uuid():
    key = experiment_key("1.10", "binary", 0)
    assert key == experiment_key("1.10", "binary", 0)
    assert key != experiment_key("2", "binary", 0)
    assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}", key)
    assert module_name_for(key) == "scoring_h2oai_experiment_" + key.replace("-", "_")


def test_bad_arguments_raise_project_errors(tmp_path):
    with pytest.raises(StandinError, match="unknown DAI line"):
        build_pipeline(tmp_path, "1.9", "binary")
    with pytest.raises(DaiMlflowError, match="unknown problem"):
        build_pipeline(tmp_path, "2", "ranking")
    assert load_build(tmp_path) is None


def test_cli_builds_and_reports(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dai_mlflow.standin", "--out", str(tmp_path / "o"),
         "--dai-version", "2", "--problem", "regression"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"scorer_zip={tmp_path / 'o' / 'scorer.zip'}" in out.stdout
    assert (tmp_path / "o" / "license.sig").is_file()
    bad = subprocess.run(
        [sys.executable, "-m", "dai_mlflow.standin", "--out", str(tmp_path / "x"),
         "--dai-version", "3"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert bad.returncode != 0
    assert "--dai-version: invalid choice: '3'" in bad.stderr


# --- license (in-process; the runtime's own code) ---------------------------------------------


def test_license_lookup_order_and_rejections(standin, monkeypatch, tmp_path):
    build = standin("2", "binary")
    text = build.license_path.read_text()
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(licensing.LicenseError, match="license not found") as err:
        licensing.load_license()
    assert "\n" not in str(err.value)
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_FILE", str(build.license_path))
    assert licensing.load_license()[0] == "DRIVERLESS_AI_LICENSE_FILE"
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_KEY", base64.b64encode(text.encode()).decode())
    assert licensing.load_license()[0] == "DRIVERLESS_AI_LICENSE_KEY"
    wrapped = base64.encodebytes(text.replace("\n", "\r\n").encode()).decode()  # as `base64` does
    assert "\n" in wrapped.strip()
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_KEY", wrapped)
    assert licensing.load_license()[0] == "DRIVERLESS_AI_LICENSE_KEY"
    made_up = base64.b64encode(b"license_version:1\nsignature:" + b"0" * 64).decode()
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_KEY", made_up)
    with pytest.raises(licensing.LicenseError, match="signature check failed"):
        licensing.load_license()
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_KEY", "not base64 at all!")
    with pytest.raises(licensing.LicenseError, match="not base64"):
        licensing.load_license()
    tampered = text.replace("2099/12/31", "2199/12/31")
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_KEY", base64.b64encode(tampered.encode()).decode())
    with pytest.raises(licensing.LicenseError) as err:
        licensing.load_license()
    assert "signature check failed" in str(err.value)
    assert text.splitlines()[-1] not in str(err.value), "the license text is never echoed"
    monkeypatch.delenv("DRIVERLESS_AI_LICENSE_KEY")
    monkeypatch.delenv("DRIVERLESS_AI_LICENSE_FILE")
    (tmp_path / ".driverlessai").mkdir()
    (tmp_path / ".driverlessai" / "license.sig").write_text(text)
    assert licensing.load_license()[0].endswith("license.sig")


# --- the model, scored in-process by the engine -----------------------------------------------


def _model(build) -> engine.Model:
    with zipfile.ZipFile(build.folder / build.experiment_wheel) as zf:
        return engine.Model(json.loads(zf.read(f"{build.module_name}/fitted_model.json")))


@pytest.mark.parametrize(("dai_version", "problem"), CASES)
def test_model_contributions_sum_to_margin_and_rows_match_batch(standin, dai_version, problem):
    build = standin(dai_version, problem)
    model = _model(build)
    frame = pd.read_csv(build.sample_input_csv)
    margins = model.score_frame(frame, output_margin=True).to_numpy()
    contribs = model.score_frame(frame, pred_contribs=True).to_numpy()
    n_feat = len(model.feature_names()) + 1
    for k in range(model.n_outputs):
        block = contribs[:, k * n_feat : (k + 1) * n_feat]
        np.testing.assert_allclose(block.sum(axis=1), margins[:, k], rtol=1e-12, atol=1e-9)
    preds = model.score_frame(frame).to_numpy()
    if problem != "regression":
        np.testing.assert_allclose(preds.sum(axis=1), 1.0)
        assert model.pred_columns() == [f"{build.target}.{lab}" for lab in build.labels]
    else:
        assert model.pred_columns() == [build.target]
    text = pd.read_csv(build.sample_input_csv, dtype=str, keep_default_na=False)
    for i in range(20):
        row = [None if v == "" else v for v in text.iloc[i].tolist()]
        one = engine.first_row(model.score_frame(engine.row_frame(row, model.column_names())))
        assert one == preds[i].tolist()
    with pytest.raises(ValueError, match="both"):
        model.pred_columns(output_margin=True, pred_contribs=True)


@pytest.mark.parametrize("problem", PROBLEMS)
def test_model_learned_something(standin, problem):
    build = standin("1.10", problem)
    holdout = pd.read_csv(build.holdout_csv)
    m = engine.metrics(_model(build), holdout, holdout[build.target])
    if problem == "regression":
        assert m["RMSE"] < holdout[build.target].std() / 2
    else:
        base = holdout[build.target].astype(str).value_counts(normalize=True).max()
        assert m["ACCURACY"] > base + 0.03


def test_fixture_reuses_a_finished_build_and_rejects_stale_ones(standin, tmp_path):
    build = standin("2", "regression")
    assert load_build(build.out_dir) == build
    copy = tmp_path / "copy"
    shutil.copytree(build.out_dir, copy)
    moved = load_build(copy)
    assert moved is not None
    assert moved.zip_path == copy / "scorer.zip", "manifest paths are relative"
    assert moved.experiment_key == build.experiment_key
    manifest = json.loads((copy / "standin.json").read_text())
    manifest["builder"] = "0" * 16
    (copy / "standin.json").write_text(json.dumps(manifest))
    assert load_build(copy) is None, "a build made by other builder code is stale"
    assert load_build(copy, current_only=False) is not None


# --- the Scorer class, in-process (numpy 2 / pandas 3 here; the venv tests cover 3.8) --------


@pytest.fixture
def scorer(standin, tmp_path, monkeypatch):
    """A Scorer of the 2/binary build, constructed in-process in a writable cwd."""
    from dai_mlflow.standin.runtime.h2oaicore.scorer import StandinScorer

    build = standin("2", "binary")
    package = tmp_path / "package"
    with zipfile.ZipFile(build.folder / build.experiment_wheel) as zf:
        zf.extract(f"{build.module_name}/fitted_model.json", package)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DRIVERLESS_AI_LICENSE_FILE", str(build.license_path))

    class Scorer(StandinScorer):
        _package_dir = str(package / build.module_name)
        _experiment_key = build.experiment_key

    return Scorer(), build


def test_scorer_inputs_are_forgiving_where_dai_is(scorer):
    s, build = scorer
    frame = pd.read_csv(build.sample_input_csv).head(50)
    expected = s.score_batch(frame)
    # Column order does not matter and extra columns are ignored.
    shuffled = frame[list(reversed(frame.columns))].assign(extra=1)
    pd.testing.assert_frame_equal(s.score_batch(shuffled), expected)
    # Text, nullable and string dtypes give the same numbers.
    as_text = frame.astype(object).where(frame.notna(), None).astype(str)
    as_text = as_text.replace({"None": "NA", "nan": ""})
    pd.testing.assert_frame_equal(s.score_batch(as_text), expected)
    typed = frame.astype({"Account Length": "Int64", "State.Code": "string"})
    pd.testing.assert_frame_equal(s.score_batch(typed), expected)
    # NA spellings in score() are missing values, like None.
    row = [None] * len(build.input_columns)
    assert s.score(row) == s.score(["NA", "", "?", "nan", None, "None", "N/A", "unknown", None])
    assert isinstance(s.get_target_labels(), np.ndarray)
    assert s.get_pred_columns(output_margin=True) == [f"{build.target}.{build.labels[1]}"]


def test_scorer_rejects_bad_inputs(scorer):
    s, build = scorer
    with pytest.raises(ValueError, match="list of 9 values"):
        s.score(["1", "2"])
    with pytest.raises(ValueError, match="string"):
        s.score("1,2,3")
    with pytest.raises(TypeError, match="pandas DataFrame"):
        s.score_batch([[1, 2]])
    frame = pd.read_csv(build.sample_input_csv).drop(columns=["x1"])
    with pytest.raises(KeyError, match="x1"):
        s.score_batch(frame)
    with pytest.raises(ValueError, match="both"):
        s.score_batch(frame, output_margin=True, pred_contribs=True)
