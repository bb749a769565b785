"""dai-mlflow's model server for Spark: one model, in its own env, fed Arrow batches over pipes.

Started by :mod:`dai_mlflow.spark.worker`: ``python -m dai_mlflow_model_hooks.arrow_server
--requests FD --answers FD``. It imports first, then waits for a model (so a spare can wait
ready). A message is one JSON line (``load``, ``score``), a score's frames an Arrow IPC stream
after it; the model's own prints go to stdout/stderr, never the pipes. It ends when the requests
pipe closes. Model side: stdlib, pandas, pyarrow and mlflow; Python 3.8-safe.
See docs/model-envs.md, "Spark: the model stays loaded".
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
import time
from typing import Any, BinaryIO, Dict, Optional, Sequence

from .stdin_server import cast_to_schema, describe, schema_columns, scratch_tracking_environ


class _Server:
    def __init__(self, requests: BinaryIO, answers: BinaryIO) -> None:
        self.requests = requests
        self.answers = answers
        self.model: Any = None
        self.direct: Any = None
        self.columns: Sequence = ()
        self.takes_params = False

    def answer(self, header: Dict[str, Any], table: Any = None) -> None:
        import pyarrow as pa

        self.answers.write(json.dumps(header).encode() + b"\n")
        if table is not None:
            with pa.ipc.new_stream(self.answers, table.schema) as writer:
                writer.write_table(table)
        self.answers.flush()

    def load(self, model_dir: str) -> None:
        import mlflow.pyfunc
        from mlflow.models import Model

        started = time.monotonic()
        # The env was built from this model's requirements: MLflow's check of them against the
        # env (0.4 s a load, and a warning about pip/setuptools pins in every executor log) is
        # skipped.
        self.model = mlflow.pyfunc.load_model(model_dir, suppress_warnings=True)
        self.columns = schema_columns(self.model)
        self.takes_params = "params" in inspect.signature(self.model.predict).parameters
        try:  # dai-mlflow's pyfunc coerces types itself: skip MLflow's per-batch checks
            self.direct = self.model.unwrap_python_model()
        except Exception:  # not a PythonModel: every batch goes through pyfunc
            self.direct = None
        example = Model.load(model_dir).load_input_example(model_dir)
        if example is not None:  # builds the scorer now: errors show at load, not in batch 1
            self.predict(cast_to_schema(example, self.columns).head(2), None)
        self.answer({"ok": True, "seconds": round(time.monotonic() - started, 3)})

    def predict(self, frame: Any, params: Optional[Dict[str, Any]]) -> Any:
        if self.direct is not None:
            return self.direct.predict(None, frame, params)
        if self.takes_params and params:
            return self.model.predict(frame, params=params)
        return self.model.predict(frame)

    def score(self, params: Optional[Dict[str, Any]]) -> None:
        import pandas as pd
        import pyarrow as pa

        table = pa.ipc.open_stream(self.requests).read_all()
        if self.model is None:
            raise RuntimeError("no model is loaded; send a load request first")
        frame = cast_to_schema(table.to_pandas(), self.columns)
        preds = self.predict(frame, params)
        if not isinstance(preds, pd.DataFrame):
            preds = pd.DataFrame(preds)
        preds.columns = [str(c) for c in preds.columns]
        self.answer({"ok": True}, pa.Table.from_pandas(preds, preserve_index=False))

    def serve(self) -> int:
        while True:
            line = self.requests.readline()
            if not line:
                return 0  # the worker is gone
            request = json.loads(line)
            op = request.get("op")
            try:
                if op == "load":
                    self.load(request["model"])
                elif op == "score":
                    self.score(request.get("params"))
                elif op == "stop":
                    return 0
                else:
                    raise ValueError(f"unknown op {op!r}")
            except Exception as e:
                message = describe(e)
                print(f"[dai-mlflow model error] {message}", file=sys.stderr, flush=True)
                self.answer({"error": message})
                if op == "load":
                    return 1


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Serve requests from ``--requests`` until it closes."""
    parser = argparse.ArgumentParser(prog="python -m dai_mlflow_model_hooks.arrow_server")
    parser.add_argument("--requests", type=int, required=True, help="fd to read requests from")
    parser.add_argument("--answers", type=int, required=True, help="fd to write answers to")
    args = parser.parse_args(argv)
    environ = dict(os.environ)
    if not environ.get("MLFLOW_TRACKING_URI"):  # MLflow 3's default is a sqlite file in cwd
        environ["MLFLOW_TRACKING_URI"] = "sqlite:///mlflow.db"
    os.environ.update(scratch_tracking_environ(environ))
    requests = os.fdopen(args.requests, "rb", buffering=1 << 16)
    answers = os.fdopen(args.answers, "wb", buffering=1 << 16)
    import mlflow.pyfunc  # noqa: F401 - the imports a spare server has done before its model
    import pandas  # noqa: F401
    import pyarrow  # noqa: F401

    return _Server(requests, answers).serve()


if __name__ == "__main__":
    sys.exit(main())
