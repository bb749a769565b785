"""The serving shim: plain ``mlflow models serve --env-manager uv`` for DAI 1.10 models.

Unit tests (no env, no network): the wheel is byte-identical across builds and builder Pythons,
installs a ``uvicorn`` console script, and ``add_to_model`` ships it only with Python < 3.9
models; the command MLflow 3's own ``get_cmd`` builds maps onto MLflow 2.x's gunicorn command.

End to end (``venv``): a copy of the logged DAI 1.10 model gets the shim, and the real
``venvs/launcher/bin/mlflow models serve -m <copy> --env-manager uv`` (MLflow 3) restores its env
offline and serves it through the shim (gunicorn + MLflow 2.17 on Python 3.8), scoring exactly
what the scorer's own ``score_batch`` gives; the tracking store it inherits is an MLflow 3 sqlite
store, which MLflow 2.17 cannot open (the shim swaps it for a private one).
"""

from __future__ import annotations

import configparser
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests

from dai_mlflow import serving_shim
from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.serve import (
    free_port,
    model_python_version,
    offline_build_env,
    serve_command,
    start_server,
    stop_server,
    wait_until_serving,
)
from dai_mlflow.serving_shim import (
    MLFLOW_APP,
    MLFLOW_WSGI_APP,
    WHEEL_FILE_NAME,
    ShimUsageError,
    add_to_model,
    build_wheel,
    gunicorn_argv,
    parse_args,
    server_environ,
)
from tests.fixtures_model import LAUNCHER_BIN, PYTHONS_DIR, run_env
from tests.fixtures_serve import START_TIMEOUT

pytestmark = pytest.mark.serve

SHIM_SOURCE = Path(serving_shim.__file__)


# ------------------------------------------------------------------------------ the wheel
def test_wheel_is_byte_identical_across_builds_and_builder_pythons(tmp_path) -> None:
    first = build_wheel(tmp_path / "a").read_bytes()
    assert build_wheel(tmp_path / "b").read_bytes() == first
    python38 = PYTHONS_DIR / "python3.8"
    if not python38.exists():
        pytest.skip(f"{python38} missing (make venvs): cannot compare with a Python 3.8 build")
    # The module is stdlib-only: Python 3.8 builds it from the file alone, without dai_mlflow.
    script = (
        "import importlib.util, sys; from pathlib import Path; "
        "spec = importlib.util.spec_from_file_location('shim', sys.argv[1]); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "m.build_wheel(Path(sys.argv[2]))"
    )
    out = tmp_path / "py38"
    subprocess.run([str(python38), "-c", script, str(SHIM_SOURCE), str(out)], check=True)
    assert (out / WHEEL_FILE_NAME).read_bytes() == first


def test_wheel_installs_a_uvicorn_script_running_this_module(tmp_path) -> None:
    wheel = build_wheel(tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names)
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        dist_info = "dai_mlflow_serving_shim-1.0.0.dist-info"
        entry_points = configparser.ConfigParser()
        entry_points.read_string(zf.read(f"{dist_info}/entry_points.txt").decode())
        assert dict(entry_points["console_scripts"]) == {"uvicorn": "dai_mlflow_serving_shim:main"}
        assert zf.read("dai_mlflow_serving_shim.py") == SHIM_SOURCE.read_bytes()
        record = zf.read(f"{dist_info}/RECORD").decode().splitlines()
        for line in record[:-1]:  # the last line is RECORD itself, unhashed
            name, digest, size = line.rsplit(",", 2)
            data = zf.read(name)
            assert digest == serving_shim._record_hash(data)
            assert int(size) == len(data)
        assert sorted(r.split(",")[0] for r in record) == names
        assert "Requires-Dist" not in zf.read(f"{dist_info}/METADATA").decode()


def test_add_to_model_only_for_python_below_3_9(tmp_path) -> None:
    line = add_to_model(tmp_path / "m38", "3.8.18")
    assert line == f"./code/{WHEEL_FILE_NAME}"
    assert (tmp_path / "m38" / line).is_file()
    assert add_to_model(tmp_path / "m38b", "3.8") == line
    for version in ("3.9.0", "3.11.7", "3.12"):
        assert add_to_model(tmp_path / version, version) is None
        assert not (tmp_path / version).exists()
    with pytest.raises(DaiMlflowError, match="not X.Y"):
        add_to_model(tmp_path / "bad", "three")


# ------------------------------------------------------------------------------ the command
def test_mlflow3_serve_command_becomes_mlflow2_gunicorn_command() -> None:
    # MLflow 3's own command line and environment, from the launcher's MLflow.
    from mlflow.pyfunc import scoring_server

    command, env = scoring_server.get_cmd("/models/m", 5001, "127.0.0.1", 90, 3)
    argv = shlex.split(command)
    assert argv[0] == "uvicorn"
    args = parse_args(argv[1:])
    assert args.app == MLFLOW_APP
    assert env[serving_shim.MODEL_PATH_ENV] == "file:///models/m"
    assert gunicorn_argv(args, env) == [
        sys.executable,
        "-m",
        "gunicorn",
        "--timeout=90",
        "-b",
        "127.0.0.1:5001",
        "--workers",
        "3",
        "--",
        MLFLOW_WSGI_APP,
    ]


def test_other_uvicorn_forms() -> None:
    args = parse_args(
        [
            "--host=::",
            "--port",
            "8080",
            "--timeout-keep-alive=5",
            "--log-level",
            "trace",
            "--reload",
            "--loop",
            "uvloop",
            MLFLOW_APP,
        ]
    )
    assert args.bind() == "[::]:8080"
    assert args.options == ["--keep-alive", "5", "--log-level", "debug"]
    assert args.ignored == ["--reload", "--loop=uvloop"]
    assert gunicorn_argv(args, {})[3] == "--timeout=60"  # MLflow's default request timeout
    assert parse_args(["--uds", "/tmp/s.sock", MLFLOW_APP]).bind() == "unix:/tmp/s.sock"
    assert parse_args([MLFLOW_APP]).bind() == "127.0.0.1:8000"  # uvicorn's defaults
    assert parse_args(["--version"]).show == "version"
    for bad, message in (
        ([], "Missing argument"),
        (["main:app"], "serves only"),
        (["--workers", "two", MLFLOW_APP], "not a valid integer"),
        (["--port"], "requires an argument"),
        ([MLFLOW_APP, "extra"], "unexpected extra argument"),
    ):
        with pytest.raises(ShimUsageError, match=message):
            parse_args(bad)


def test_a_database_tracking_store_is_swapped_for_a_private_file_store() -> None:
    env = server_environ({"MLFLOW_TRACKING_URI": "sqlite:///x/mlflow.db", "A": "1"})
    assert env["MLFLOW_TRACKING_URI"].startswith("file://")
    assert env["MLFLOW_TRACKING_URI"].endswith("/var/dai_mlflow_serving_shim/mlruns")
    assert env["A"] == "1"
    for kept in ("http://tracking:5000", "file:///tmp/mlruns", "databricks"):
        assert server_environ({"MLFLOW_TRACKING_URI": kept})["MLFLOW_TRACKING_URI"] == kept
    assert "MLFLOW_TRACKING_URI" not in server_environ({})


# ------------------------------------------------------------------------------ end to end
def _mlflow3_sqlite_store(folder: Path) -> str:
    """A tracking store created by this (MLflow 3) process: MLflow 2.17 cannot open it."""
    import mlflow

    folder.mkdir(parents=True)
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    mlflow.MlflowClient(tracking_uri=uri).search_experiments()
    return uri


def _group_gone(pgid: int, timeout: float) -> bool:
    """Whether every process of group ``pgid`` has exited within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.venv
def test_plain_mlflow_models_serve_uv_serves_a_dai_1_10_model(
    logged_model, scorer_truth, tmp_path
) -> None:
    """The logged model itself (log.py ships the shim with Python 3.8 models), unchanged."""
    model = logged_model("1.10", "binary")
    truth = scorer_truth(model)
    copy = model.local_dir
    python_version = model_python_version(copy)
    line = add_to_model(tmp_path / "probe", python_version)
    assert line is not None
    assert line in (copy / "requirements.txt").read_text().splitlines()
    assert (copy / line).is_file()

    env = run_env(model.license_env)
    env["HOME"] = str(tmp_path)  # no license of the developer's
    env.update(offline_build_env(python_version, env["PATH"]))
    env["MLFLOW_TRACKING_URI"] = _mlflow3_sqlite_store(tmp_path / "store")
    port = free_port()
    cmd = [*serve_command(str(LAUNCHER_BIN / "mlflow"), str(copy), port, "uv"), "-t", "90"]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    log = tmp_path / "server.log"
    proc = start_server(cmd, env, log, cwd=cwd)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_serving(f"{url}/ping", proc, START_TIMEOUT, log)
        records = truth["records"]
        columns = list(records[0])
        body = {
            "dataframe_split": {
                "columns": columns,
                "data": [[r[c] for c in columns] for r in records],
            }
        }
        resp = requests.post(f"{url}/invocations", json=body, timeout=120)
        assert resp.status_code == 200, resp.text[:2000]
        predictions = resp.json()["predictions"]
        expected = truth["batch"]
        assert list(predictions[0]) == expected["columns"]
        assert [[p[c] for c in expected["columns"]] for p in predictions] == expected["values"]
    finally:
        # SIGTERM to `mlflow models serve` alone: MLflow's parent-death signal must reach
        # gunicorn, which only works because the shim exec'd it (same process, no orphan).
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)  # reaped: a zombie leader would still count as the group
        gone = _group_gone(proc.pid, timeout=30)
        stop_server(proc)  # SIGKILLs whatever is left of the group: nothing outlives the test
    assert gone, "the server outlived `mlflow models serve` (SIGTERM did not reach gunicorn)"
    text = log.read_text(errors="replace")
    assert "uvicorn (dai-mlflow serving shim): serving with -m gunicorn --timeout=90" in text
    assert "MLFLOW_TRACKING_URI is a database store" in text
    assert "command not found" not in text
