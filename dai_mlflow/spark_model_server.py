"""The model server that ``spark_udf`` starts in a rebuilt model env (uv / virtualenv), run by path.

MLflow's Spark UDF starts ``python <driver's mlflow>/pyfunc/stdin_server.py`` inside the model's
env. Two things go wrong with that for DAI models:

* the script is the *driver's* MLflow (3.x) but runs against the *model's* MLflow (2.17 for
  Python 3.8), and calls ``scoring_server.load_model_with_mlflow_config``, which 2.17 lacks;
* any exception while loading or predicting kills the process silently, and the UDF then waits
  for an answer until ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT`` ("Scoring timeout").

``dai_mlflow.spark`` points the UDF at this script instead. It speaks the same protocol (one JSON
request per stdin line, the answer written to ``request["output_file"]``) with APIs present in
MLflow 2.x and 3.x, and answers a failed load or predict with ``{"id": ..., "dai_mlflow_error":
"<Type>: <message>"}`` so the client raises the real error at once.

With ``--wait-for-model`` (how :mod:`dai_mlflow.warm_servers` starts it), the server imports
MLflow first and only then reads its model path from a first stdin line ``{"model_uri": PATH}``.
A server started that way while an earlier job runs is ready for the next job of the same env
without the interpreter start (``import mlflow`` alone takes seconds). Waiting, it exits when
stdin closes (its Spark worker is gone) or after ``DAI_MLFLOW_WARM_SERVER_IDLE`` seconds.

With ``DAI_MLFLOW_PRIVATE_TRACKING=1`` (set by ``dai_mlflow.envmanagers.model_server_env``), the
server tracks into a scratch file store of its own, removed on exit, instead of the driver's
``MLFLOW_TRACKING_URI``: loading a model enables MLflow tracing, which opens the tracking store,
and MLflow 2.17 cannot open the driver's MLflow 3 sqlite store ("Can't locate revision").

Runs inside the model env: stdlib + mlflow only, Python 3.8-safe.
"""

import os
import sys

# Run by path, this file's folder (dai_mlflow/) would be sys.path[0]; its module names must not
# shadow the model's imports.
if sys.path and os.path.abspath(sys.path[0] or ".") == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import argparse  # noqa: E402
import atexit  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import select  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

ERROR_KEY = "dai_mlflow_error"
MODEL_CONFIG_ENV = "SERVING_MODEL_CONFIG"
PRIVATE_TRACKING_ENV = "DAI_MLFLOW_PRIVATE_TRACKING"
IDLE_ENV = "DAI_MLFLOW_WARM_SERVER_IDLE"
DEFAULT_IDLE_SECONDS = 600.0
_logger = logging.getLogger("dai_mlflow.spark_model_server")


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``, the one line a user needs."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _write_error(request: dict, message: str) -> None:
    with open(request["output_file"], "w") as f:
        json.dump({"id": request["id"], ERROR_KEY: message}, f)


def use_private_tracking() -> None:
    """Point MLflow at a scratch file store of this process (before mlflow is imported)."""
    scratch = tempfile.mkdtemp(prefix="dai-mlflow-server-tracking-")
    atexit.register(shutil.rmtree, scratch, True)
    os.environ["MLFLOW_TRACKING_URI"] = Path(scratch).as_uri()
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses file stores otherwise
    os.environ.pop("MLFLOW_REGISTRY_URI", None)


def read_model_uri() -> Optional[str]:
    """The model path of the first stdin line; None on EOF or after the idle time."""
    idle = float(os.environ.get(IDLE_ENV) or DEFAULT_IDLE_SECONDS)
    ready, _, _ = select.select([sys.stdin], [], [], idle)
    line = sys.stdin.readline() if ready else ""
    return json.loads(line)["model_uri"] if line.strip() else None


def main() -> int:
    """Serve predictions for requests on stdin until it closes; 1 after an error."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    if os.environ.get(PRIVATE_TRACKING_ENV) == "1":
        use_private_tracking()
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-uri")
    parser.add_argument("--wait-for-model", action="store_true", help="model path from stdin")
    args = parser.parse_args()
    if not (args.model_uri or args.wait_for_model):
        parser.error("give --model-uri or --wait-for-model")
    model = schema = scoring_server = None
    load_error = None
    try:
        import mlflow.pyfunc
        from mlflow.pyfunc import scoring_server
    except Exception as e:
        traceback.print_exc()
        load_error = f"importing mlflow failed: {describe(e)}"
    if args.wait_for_model:
        args.model_uri = read_model_uri()
        if args.model_uri is None:
            return 0
    if not load_error:
        try:
            config = os.environ.get(MODEL_CONFIG_ENV)
            kwargs = {"model_config": json.loads(config)} if config else {}
            _logger.info("Loading model from %s", args.model_uri)
            model = mlflow.pyfunc.load_model(args.model_uri, **kwargs)
            schema = model.metadata.get_input_schema()
            _logger.info("Loaded model")
        except Exception as e:
            traceback.print_exc()
            load_error = f"loading the model failed: {describe(e)}"
    if load_error:
        print(f"[dai-mlflow model error] {load_error}", file=sys.stderr, flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if load_error:
            _write_error(request, load_error)
            return 1
        try:
            data, params = scoring_server._split_data_and_params(request["data"])
            data = scoring_server.infer_and_parse_data(data, schema)
            if "params" in inspect.signature(model.predict).parameters:
                preds = model.predict(data, params=params)
            else:
                preds = model.predict(data)
            tmp = request["output_file"] + ".part"
            with open(tmp, "w") as f:
                scoring_server.predictions_to_json(preds, f, {"id": request["id"]})
            os.replace(tmp, request["output_file"])
        except Exception as e:
            traceback.print_exc()
            message = describe(e)
            print(f"[dai-mlflow model error] {message}", file=sys.stderr, flush=True)
            _write_error(request, message)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
