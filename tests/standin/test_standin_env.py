"""The stand-in pipeline installed in fresh venvs of its own Python (3.8 for 1.10, 3.11 for 2):
DAI's Scorer API, exact contributions, and every quirk (license, ./tmp in the cwd, slow start,
fileno() at import), plus the install failures a packager has to avoid."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, List, Optional

import pytest

from dai_mlflow.envs.pythons import find_python
from dai_mlflow.standin import DAI_LINES, PROBLEMS, build_pipeline

pytestmark = pytest.mark.venv

REPO = Path(__file__).resolve().parents[2]
LINES = sorted(DAI_LINES)
UV = (
    str(Path(sys.executable).parent / "uv")
    if (Path(sys.executable).parent / "uv").is_file()
    else "uv"
)

_CHECK = textwrap.dedent(
    """
    import csv, json, os, platform, sys, time
    import numpy as np, pandas as pd
    module, sample = sys.argv[1], sys.argv[2]
    started = time.monotonic()
    mod = __import__(module)
    scorer = mod.Scorer()
    ctor = time.monotonic() - started
    frame = pd.read_csv(sample)
    with open(sample, newline="", encoding="utf-8") as f:
        text_rows = [[v if v != "" else None for v in r] for r in list(csv.reader(f))[1:]]
    out = scorer.score_batch(frame)
    margin = scorer.score_batch(frame, output_margin=True)
    contrib = scorer.score_batch(frame, pred_contribs=True, fast_approx=True)
    row_mismatch = 0
    for i in range(60):
        if scorer.score(text_rows[i], apply_data_recipes=False) != out.iloc[i].tolist():
            row_mismatch += 1
        numbers = [None if pd.isna(v) else v for v in frame.iloc[i].tolist()]
        if scorer.score(numbers) != out.iloc[i].tolist():
            row_mismatch += 1
        if scorer.score(text_rows[i], pred_contribs=True) != contrib.iloc[i].tolist():
            row_mismatch += 1
        if scorer.score(text_rows[i], output_margin=True) != margin.iloc[i].tolist():
            row_mismatch += 1
    n_out = margin.shape[1]
    blocks = np.split(contrib.to_numpy(), n_out, axis=1)
    worst = max(float(np.max(np.abs(b.sum(axis=1) - margin.to_numpy()[:, k])))
                for k, b in enumerate(blocks))
    labels = scorer.get_target_labels()
    try:
        scorer.score_batch(frame, output_margin=True, pred_contribs=True)
        both = "accepted"
    except ValueError:
        both = "rejected"
    print(json.dumps({
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "ctor_seconds": ctor,
        "columns": list(scorer.get_column_names()),
        "transformed": list(scorer.get_transformed_column_names()),
        "labels": None if labels is None else [str(v) for v in labels],
        "labels_type": type(labels).__name__,
        "pred_columns": list(out.columns),
        "api_pred_columns": scorer.get_pred_columns(False, False),
        "contrib_columns": list(contrib.columns),
        "api_contrib_columns": scorer.get_pred_columns(False, True),
        "margin_columns": list(margin.columns),
        "range_index": isinstance(out.index, pd.RangeIndex),
        "n_rows": len(out),
        "row_mismatch": row_mismatch,
        "worst_contrib_error": worst,
        "score_type": type(scorer.score(text_rows[0])).__name__,
        "both_flags": both,
        "prob_sums": float(np.max(np.abs(out.to_numpy().sum(axis=1) - 1))),
        "tmp_entries": sorted(os.listdir("tmp")),
    }))
    """
)


def _run(python: Path, args: List[str], cwd: Path, env: Dict[str, str], prefix=()) -> tuple:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DRIVERLESS_AI_")}
    full_env.update(env)
    proc = subprocess.run(
        [*prefix, str(python), *args],
        cwd=str(cwd),
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("dai_version", LINES)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_scorer_api_in_fresh_venv(standin, standin_env, tmp_path, dai_version, problem):
    build = standin(dai_version, problem)
    python = standin_env(dai_version)
    script = tmp_path / "check.py"
    script.write_text(_CHECK)
    code, out, err = _run(
        python,
        [str(script), build.module_name, str(build.sample_input_csv)],
        tmp_path,
        build.license_env(),
    )
    assert code == 0, err
    res = json.loads(_last_line(out))
    assert res["python"].startswith(DAI_LINES[dai_version].python + ".")
    if dai_version == "1.10":
        assert (res["numpy"], res["pandas"]) == ("1.22.0", "1.2.5")
    assert res["columns"] == list(build.input_columns)
    assert res["row_mismatch"] == 0, "score() of a row equals its score_batch() row"
    assert res["worst_contrib_error"] < 1e-9
    assert res["score_type"] == "list"
    assert res["both_flags"] == "rejected"
    assert res["range_index"]
    assert res["pred_columns"] == res["api_pred_columns"]
    assert res["contrib_columns"] == res["api_contrib_columns"]
    assert res["ctor_seconds"] >= 0.5
    features = res["transformed"]
    assert any(":OHE:" in f or "_OHE:" in f for f in features)
    assert any("_CVTE:" in f for f in features)
    if problem == "regression":
        assert res["labels"] is None
        assert res["pred_columns"] == [build.target]
        assert res["contrib_columns"] == [f"contrib_{f}" for f in features] + ["contrib_bias"]
    else:
        assert res["labels_type"] == "ndarray"
        assert res["labels"] == list(build.labels)
        assert res["pred_columns"] == [f"{build.target}.{lab}" for lab in build.labels]
        assert res["prob_sums"] < 1e-9
    if problem == "multiclass":
        assert len(res["contrib_columns"]) == len(build.labels) * (len(features) + 1)
        assert res["contrib_columns"][-1] == f"contrib_bias.{build.labels[-1]}"
    assert f"h2oai_experiment_{build.experiment_key}.log" in res["tmp_entries"]
    log = (tmp_path / "tmp" / f"h2oai_experiment_{build.experiment_key}.log").read_text()
    assert "License is valid" in log
    signature = build.license_path.read_text().strip().splitlines()[-1].split(":", 1)[1]
    assert signature not in log, "the license text is never logged"
    assert "License manager initialized" in err, "start-up is logged to the console, like DAI"
    assert signature not in err + out


_CONSTRUCT = "import sys; m = __import__(sys.argv[1]); m.Scorer(); print('constructed')"


@pytest.mark.parametrize("dai_version", LINES)
def test_license_is_required_and_checked(standin, standin_env, tmp_path, dai_version):
    build = standin(dai_version, "binary")
    python = standin_env(dai_version)
    home = tmp_path / "home"
    home.mkdir()
    args = ["-c", _CONSTRUCT, build.module_name]
    # DAI 1.x logs why and ends the process (sys.exit(-1)); DAI 2 raises LicenseError.
    failed = "License check failed: " if dai_version == "1.10" else "LicenseError: "
    exit_code = 255 if dai_version == "1.10" else 1
    code, _, err = _run(python, args, tmp_path, {"HOME": str(home)})
    assert code == exit_code
    assert failed + "Driverless AI license not found" in _last_line(err)
    made_up = base64.b64encode(b"license_version:1\nlicensee:me\nsignature:deadbeef").decode()
    code, _, err = _run(
        python, args, tmp_path, {"HOME": str(home), "DRIVERLESS_AI_LICENSE_KEY": made_up}
    )
    assert code == exit_code
    assert "signature check failed" in _last_line(err)
    assert made_up not in err
    code, _, err = _run(
        python, args, tmp_path, {"HOME": str(home), "DRIVERLESS_AI_LICENSE_KEY": "abc%%%"}
    )
    assert code == exit_code
    assert failed + "invalid Driverless AI license" in _last_line(err)
    key = base64.b64encode(build.license_path.read_bytes()).decode()
    for env in (
        {"DRIVERLESS_AI_LICENSE_KEY": key},
        build.license_env(),
    ):
        code, out, err = _run(python, args, tmp_path, {"HOME": str(home), **env})
        assert code == 0, err
        assert out.strip() == "constructed"
    (home / ".driverlessai").mkdir()
    shutil.copy(build.license_path, home / ".driverlessai" / "license.sig")
    code, out, err = _run(python, args, tmp_path, {"HOME": str(home)})
    assert code == 0, err


def _read_only_prefix(tmp_path: Path) -> Optional[tuple]:
    """A command prefix that runs the child with a read-only tmpfs mounted on ``ro``.

    Tests run as root, for whom chmod 555 is no barrier; a read-only mount is.
    """
    ro = tmp_path / "ro"
    ro.mkdir()
    unshare = shutil.which("unshare")
    if not unshare:
        return None
    for flags in ("-m", "-rm"):
        wrap = (
            unshare,
            flags,
            "sh",
            "-c",
            f'mount -t tmpfs -o ro tmpfs "{ro}" && cd "{ro}" && exec "$0" "$@"',
        )
        probe = subprocess.run([*wrap, "touch", "x"], capture_output=True, text=True, check=False)
        if probe.returncode != 0 and "Read-only file system" in probe.stderr:
            return wrap
    return None


@pytest.mark.parametrize("dai_version", LINES)
def test_scorer_needs_a_writable_cwd(standin, standin_env, tmp_path, dai_version):
    build = standin(dai_version, "regression")
    python = standin_env(dai_version)
    args = ["-c", _CONSTRUCT, build.module_name]
    prefix = _read_only_prefix(tmp_path)
    if prefix is not None:
        code, _, err = _run(python, args, tmp_path, build.license_env(), prefix=prefix)
        assert code != 0
        assert "Read-only file system" in _last_line(err)
    # /proc refuses new folders even to root: a second read-only cwd that needs no mount.
    code, _, err = _run(python, args, Path("/proc"), build.license_env())
    assert code != 0
    assert "tmp" in _last_line(err)
    assert "Error" in _last_line(err)
    code, out, err = _run(python, args, tmp_path, build.license_env())
    assert code == 0, err
    assert (tmp_path / "tmp" / f"h2oai_experiment_{build.experiment_key}").is_dir()


_NO_FILENO = """
import sys
class Stream:
    def write(self, text):
        return len(text)
    def flush(self):
        pass
sys.{which} = Stream()
try:
    import {module}
except Exception as e:
    sys.__stdout__.write(type(e).__name__ + ": " + str(e) + "\\n")
    sys.__stdout__.flush()
    sys.exit(3)
"""


@pytest.mark.parametrize("dai_version", LINES)
def test_import_calls_fileno_on_std_streams(standin, standin_env, tmp_path, dai_version):
    build = standin(dai_version, "multiclass")
    python = standin_env(dai_version)
    for which in ("stdout", "stderr"):
        code, out, err = _run(
            python,
            ["-c", _NO_FILENO.format(which=which, module=build.module_name)],
            tmp_path,
            build.license_env(),
        )
        assert code == 3, err
        assert "AttributeError: 'Stream' object has no attribute 'fileno'" in out
    code, _, err = _run(python, ["-c", f"import {build.module_name}"], tmp_path, {})
    assert code == 0, err


def _fresh_venv(tmp_path: Path, python_version: str, name: str) -> Path:
    dest = tmp_path / name
    interp = find_python(python_version)
    subprocess.run([UV, "venv", "-q", "-p", str(interp.executable), str(dest)], check=True)
    return dest / "bin" / "python"


def _uv_install(python: Path, args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [UV, "pip", "install", "--python", str(python), *args],
        cwd=str(cwd),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize("dai_version", LINES)
def test_must_drop_lines_fail_loudly_and_wheels_refuse_other_pythons(
    standin, tmp_path, dai_version
):
    build = standin(dai_version, "binary")
    line = DAI_LINES[dai_version]
    python = _fresh_venv(tmp_path, line.python, "same")
    pyorc = _uv_install(python, [line.pyorc_pin], build.folder)
    assert pyorc.returncode != 0
    assert "pyorc" in pyorc.stderr
    gpu = _uv_install(
        python,
        [build.h2o4gpu_wheel, line.pin("numpy"), "-c", "req_constraints_deps.txt"],
        build.folder,
    )
    assert gpu.returncode != 0
    assert "h2o4gpu" in gpu.stderr
    naive = _uv_install(
        python, ["-r", "requirements.txt", "-c", "req_constraints_deps.txt"], build.folder
    )
    assert naive.returncode != 0, "installing requirements.txt as exported must fail"
    other = _fresh_venv(tmp_path, "3.11" if line.python == "3.8" else "3.8", "other")
    wrong = _uv_install(other, [build.core_wheel, "--no-deps"], build.folder)
    assert wrong.returncode != 0
    assert "h2oaicore" in wrong.stderr
    # uv names either the wheel's cp tag or its Requires-Python, whichever it checks first.
    assert re.search(r"python version tag|current python version", wrong.stderr.lower())


@pytest.mark.parametrize("dai_version", LINES)
def test_builder_is_byte_identical_on_the_pipelines_own_python(standin_env, tmp_path, dai_version):
    """The builder run by the pipeline's Python (3.8/numpy 1.22 or 3.11/numpy 1.26) writes the
    same bytes as the builder run by the launcher (3.11/numpy 2)."""
    python = standin_env(dai_version)
    for problem in PROBLEMS:
        here = build_pipeline(tmp_path / f"here-{problem}", dai_version, problem)
        there = tmp_path / f"there-{problem}"
        code, _, err = _run(
            python,
            ["-m", "dai_mlflow.standin", "--out", str(there), "--dai-version", dai_version,
             "--problem", problem],
            REPO,
            {"PYTHONPATH": str(REPO)},
        )  # fmt: skip
        assert code == 0, err
        assert (there / "scorer.zip").read_bytes() == here.zip_path.read_bytes()


@pytest.mark.parametrize("dai_version", LINES)
def test_example_py_runs_in_the_pipelines_env(standin, standin_env, tmp_path, dai_version):
    build = standin(dai_version, "multiclass")
    python = standin_env(dai_version)
    code, out, err = _run(python, [str(build.folder / "example.py")], tmp_path, build.license_env())
    assert code == 0, err
    assert "---------- score a frame ----------" in out
    assert f"{build.target}.{build.labels[0]}" in out
    assert (tmp_path / "tmp").is_dir()
