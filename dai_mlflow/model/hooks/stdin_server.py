"""MLflow's stdin scoring protocol, served by the model env's own MLflow (public API only).

``spark_udf(env_manager="uv"|"virtualenv")`` runs the *driver's* MLflow ``stdin_server.py`` in
the model env; MLflow 3's script calls what MLflow 2.17 lacks, so :mod:`dai_mlflow.model.hooks`
runs this module instead: one JSON request per stdin line, the answer written to its
``output_file``, a failure as one ``[dai-mlflow model error]`` line on stderr and exit 1.
Model-side: stdlib, pandas and mlflow only; Python 3.8-safe. See docs/model-hooks.md.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

ERROR_MARKER = "[dai-mlflow model error]"
MODEL_CONFIG_ENV = "SERVING_MODEL_CONFIG"
# Tracking stores MLflow 2.x cannot open when MLflow 3 created them ("Can't locate revision").
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
INPUT_KEYS = ("dataframe_split", "dataframe_records", "inputs", "instances")
_NUMERIC = {"double": "float64", "float": "float32"}
_INTEGER = {"long": "Int64", "integer": "Int32"}


def describe(exc: BaseException) -> str:
    """``Type: first line of the message``: the one line a user needs.

    :func:`dai_mlflow.errors.one_line`'s twin: this wheel is installed into model envs without
    dai_mlflow, so it cannot import it (tests/test_errors.py keeps the two alike)."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")


def scratch_tracking_environ(
    environ: Mapping[str, str], store: Optional[Path] = None
) -> Dict[str, str]:
    """``environ`` with a database tracking/registry URI replaced by a file store.

    Args:
        environ: the environment to start from.
        store: the file store's folder; by default a temporary folder removed when this process
            exits.

    Other URIs (a server, a file store, Databricks) are kept.
    """
    env = dict(environ)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        scheme = env.get(var, "").split(":", 1)[0].split("+", 1)[0].lower()
        if scheme in DATABASE_SCHEMES:
            if store is None:
                store = Path(tempfile.mkdtemp(prefix="dai-mlflow-server-tracking-"))
                atexit.register(shutil.rmtree, str(store), True)
            env[var] = store.as_uri()
            env["MLFLOW_ALLOW_FILE_STORE"] = "true"  # MLflow 3 refuses file stores otherwise
    return env


def parse_data(data: Any) -> Tuple[Any, Optional[Dict[str, Any]]]:
    """Split a request's ``data`` (JSON text or parsed) into a pandas frame and params.

    Raises:
        ValueError: the payload has none of :data:`INPUT_KEYS`.
    """
    import pandas as pd

    payload = json.loads(data) if isinstance(data, (str, bytes)) else data
    if not isinstance(payload, dict) or not any(k in payload for k in INPUT_KEYS):
        raise ValueError(f"the request data needs one of {', '.join(INPUT_KEYS)}")
    params = payload.get("params")
    if "dataframe_split" in payload:
        split = payload["dataframe_split"]
        frame = pd.DataFrame(split.get("data"), columns=split.get("columns"))
    elif "dataframe_records" in payload:
        frame = pd.DataFrame.from_records(payload["dataframe_records"])
    else:
        values = payload.get("inputs", payload.get("instances"))
        frame = pd.DataFrame(values if not isinstance(values, dict) else values)
    return frame, params


def cast_to_schema(frame: Any, columns: Sequence[Tuple[str, str]]) -> Any:
    """Cast the frame's columns to the schema's types (``(name, MLflow type name)`` pairs).

    Numbers become float64/float32 (missing values as NaN) or nullable integers; strings keep
    ``None`` for missing values. Columns the schema does not name, and columns already of the
    right type, are left as they are (no copy when nothing changes).

    Raises:
        ValueError: a value cannot be read as the column's type.
    """
    import pandas as pd

    out = frame
    for name, kind in columns:
        if name not in frame.columns:
            continue
        values = frame[name]
        try:
            if kind in _NUMERIC:
                if str(values.dtype) == _NUMERIC[kind]:
                    continue
                cast = pd.to_numeric(values, errors="raise").astype(_NUMERIC[kind])
            elif kind in _INTEGER:
                if str(values.dtype) == _INTEGER[kind]:
                    continue
                cast = pd.to_numeric(values, errors="raise").astype(_INTEGER[kind])
            elif kind == "string":
                if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
                    continue
                present = values.notna()
                cast = values.astype("object")
                cast[present] = cast[present].astype(str)
                cast = cast.where(present, None)
            else:
                continue
        except (ValueError, TypeError) as e:
            raise ValueError(f"column {name!r} must be {kind}: {e}") from e
        if out is frame:
            out = frame.copy()
        out[name] = cast
    return out


def schema_columns(model: Any) -> Tuple[Tuple[str, str], ...]:
    """(name, type name) of the model's named input columns; empty without a signature."""
    schema = model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return ()
    return tuple(
        (str(s.name), str(getattr(getattr(s, "type", None), "name", ""))) for s in schema.inputs
    )


def _plain(value: Any) -> Any:
    """JSON for numpy scalars and arrays (floats keep every digit, as ``repr`` does)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def predictions_json(preds: Any, request_id: str) -> str:
    """The answer line: ``{"predictions": ..., "id": ...}`` (frames as records)."""
    import pandas as pd

    if isinstance(preds, pd.DataFrame):
        preds = preds.to_dict(orient="records")
    elif isinstance(preds, pd.Series):
        preds = preds.tolist()
    return json.dumps({"predictions": preds, "id": request_id}, default=_plain)


def write_answer(output_file: str, text: str) -> None:
    """Write ``text`` to ``output_file`` through a renamed temporary file."""
    tmp = f"{output_file}.{os.getpid()}.part"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, output_file)


def _fail(message: str) -> int:
    print(f"{ERROR_MARKER} {message}", file=sys.stderr, flush=True)
    return 1


def load(model_uri: str) -> Any:
    """Load the model with this env's MLflow (``SERVING_MODEL_CONFIG`` as ``model_config``)."""
    import mlflow.pyfunc

    config = os.environ.get(MODEL_CONFIG_ENV)
    kwargs = {"model_config": json.loads(config)} if config else {}
    return mlflow.pyfunc.load_model(model_uri, **kwargs)


def serve(model: Any, lines: Any) -> int:
    """Answer each request line until the input ends; 1 after the first failure."""
    import inspect

    columns = schema_columns(model)
    takes_params = "params" in inspect.signature(model.predict).parameters
    for line in lines:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            frame, params = parse_data(request["data"])
            frame = cast_to_schema(frame, columns)
            preds = model.predict(frame, params=params) if takes_params else model.predict(frame)
            write_answer(request["output_file"], predictions_json(preds, request["id"]))
        except Exception as e:
            return _fail(f"predicting failed: {describe(e)}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Load ``--model-uri`` and serve requests from stdin."""
    parser = argparse.ArgumentParser(
        prog="python -m dai_mlflow_model_hooks.stdin_server",
        description="MLflow's stdin scoring protocol, served with this env's MLflow.",
    )
    parser.add_argument("--model-uri", required=True, help="the local model folder")
    args = parser.parse_args(argv)
    os.environ.update(scratch_tracking_environ(dict(os.environ)))
    print(f"dai-mlflow stdin server: loading {args.model_uri}", file=sys.stderr, flush=True)
    try:
        model = load(args.model_uri)
    except Exception as e:
        return _fail(f"loading the model failed: {describe(e)}")
    print("dai-mlflow stdin server: ready", file=sys.stderr, flush=True)
    return serve(model, sys.stdin)


if __name__ == "__main__":
    sys.exit(main())
