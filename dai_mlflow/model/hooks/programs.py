"""One-shot programs run in a model's own env: the log-time check, and scoring a file.

``python -m dai_mlflow_model_hooks.programs check MODEL_DIR`` (``mlflow run``'s check before
logging) or ``... score MODEL_DIR DATA csv|parquet OUT_CSV`` (lifecycle scoring). Each prints one
``DAI_MLFLOW_RESULT=<json>`` line, or ``[dai-mlflow model error] <Type>: <message>`` and exits
1, for :func:`dai_mlflow.envs.model_env.run_program`. Model side: stdlib, pandas and mlflow;
Python 3.8-safe. See docs/model-envs.md.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Callable, Dict, List, Sequence

from .stdin_server import ERROR_MARKER, cast_to_schema, describe, schema_columns

RESULT_MARKER = "DAI_MLFLOW_RESULT="


def check(model_dir: str) -> Dict[str, Any]:
    """Predict the staged model's input example in this env; what the logger checks."""
    import mlflow.pyfunc
    from mlflow.models import Model

    # A DataFrame for a DAI model; MLflow's annotation covers every kind of input example.
    example: Any = Model.load(model_dir).load_input_example(model_dir)
    model = mlflow.pyfunc.load_model(model_dir)
    default = model.predict(example)
    contribs = model.predict(example, params={"pred_contribs": True})
    # The scorer predict() just built, from the model's own code (now on sys.path).
    from dai_mlflow.model.pyfunc import get_scorer

    module = model.metadata.metadata["scorer_module"]
    return {
        "rows": len(example),
        "columns": [str(c) for c in default.columns],
        "contrib_columns": [str(c) for c in contribs.columns],
        "default_rows": len(default),
        "scorer_columns": [str(c) for c in get_scorer(module).get_column_names()],
    }


def score_file(model_dir: str, data_path: str, fmt: str, out_path: str) -> Dict[str, Any]:
    """Predict a csv/parquet file; write DAI's output columns to ``out_path`` (csv)."""
    import mlflow.pyfunc
    import pandas as pd

    model = mlflow.pyfunc.load_model(model_dir)
    columns = schema_columns(model)
    text: List[str] = [name for name, kind in columns if kind == "string"]
    if fmt == "csv":
        frame = pd.read_csv(data_path, dtype=dict.fromkeys(text, str), keep_default_na=True)
    else:
        frame = pd.read_parquet(data_path)
    schema = model.metadata.get_input_schema()
    missing = [n for n in schema.required_input_names() if n not in frame.columns]
    if missing:
        raise ValueError(f"input is missing model column(s) {missing}")
    frame = cast_to_schema(frame[[n for n, _ in columns if n in frame.columns]], columns)
    out = pd.DataFrame(model.predict(frame))
    out.to_csv(out_path, index=False)
    return {"rows": len(out), "columns": [str(c) for c in out.columns]}


PROGRAMS: Dict[str, Callable[..., Dict[str, Any]]] = {"check": check, "score": score_file}


def main(argv: Sequence[str]) -> int:
    """Run one program; its result line, or its one-line error and 1."""
    if not argv or argv[0] not in PROGRAMS:
        print(f"usage: programs {{{'|'.join(PROGRAMS)}}} ARGS...", file=sys.stderr)
        return 2
    try:
        result = PROGRAMS[argv[0]](*argv[1:])
    except BaseException as e:  # one line, whatever the model did
        print(f"{ERROR_MARKER} {describe(e)}", file=sys.stderr, flush=True)
        return 1
    print(RESULT_MARKER + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
