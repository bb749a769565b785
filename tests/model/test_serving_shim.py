"""The serving shim: the ``uvicorn`` command a Python 3.8 model env gets, mapped onto gunicorn.

Pure tests: the command MLflow 3's own ``get_cmd`` builds maps onto MLflow 2.x's gunicorn
command, other uvicorn forms map or are ignored with a note, and a database tracking store is
swapped for a file store. The end-to-end ``mlflow models serve --env-manager uv`` of both DAI
lines is in ``tests/model/test_plain_mlflow.py``.
"""

from __future__ import annotations

import shlex
import sys

import pytest

from dai_mlflow.model.hooks import serving_shim
from dai_mlflow.model.hooks.serving_shim import (
    MLFLOW_APP,
    MLFLOW_WSGI_APP,
    ShimUsageError,
    gunicorn_argv,
    parse_args,
    server_environ,
)


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
