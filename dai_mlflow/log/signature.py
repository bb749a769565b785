"""Input schema, input example and params schema of a DAI pipeline's pyfunc.

Read from ``example.py`` (parsed with :mod:`ast`, never executed) and
``training_data_column_stats.json``. Project env side, Python 3.8-safe. See docs/logging.md,
"Signature and input example".
"""

from __future__ import annotations

import ast
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from dai_mlflow.errors import PipelineError
from dai_mlflow.log.pipeline import COLUMN_STATS_FILE_NAME, ScoringPipeline, read_column_stats

EXAMPLE_FILE_NAME = "example.py"
SUMMARY_ZIP_GLOB = "h2oai_experiment_summary_*.zip"
EXAMPLE_ROWS = 5
PARAMS = (("pred_contribs", False), ("output_margin", False))
_TABLE_ROW = re.compile(r"^#\s+(\S.*?)\s+(\S+)\s+(\[.*\]|\S.*)?$")


@dataclass(frozen=True)
class InputSpec:
    """Typed input columns (scorer order) and example rows, as plain Python values."""

    columns: Tuple[Tuple[str, str], ...]
    rows: Tuple[Tuple[Any, ...], ...]

    @property
    def names(self) -> List[str]:
        return [n for n, _ in self.columns]


def mlflow_type(dai_type: str) -> str:
    """Map a DAI/pandas type name to an MLflow ColSpec type."""
    t = dai_type.strip().lower()
    if t.startswith(("float", "int", "uint", "real", "double", "numeric", "long")):
        return "double"
    if t.startswith("bool"):
        return "boolean"
    return "string"


_DTYPE_WORD = re.compile(
    r"^(float|int|uint|bool|object|str|string|category|date|datetime|time|real|numeric)", re.I
)
_QUOTED = re.compile(r"""^('(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\s+(\S+)""")


def _table_row(cells_text: str) -> Optional[Tuple[str, str]]:
    """``name type ...`` of one table row; names may be quoted Python literals or bare words."""
    text = cells_text.strip()
    quoted = _QUOTED.match(text)
    if quoted:
        try:
            return str(ast.literal_eval(quoted.group(1))), quoted.group(2)
        except (ValueError, SyntaxError):
            return None
    cells = text.split()
    if len(cells) < 2:
        return None
    # Bare names may contain spaces: the type is the first cell that is a dtype word.
    idx = next((k for k in range(1, len(cells)) if _DTYPE_WORD.match(cells[k])), 1)
    return " ".join(cells[:idx]), cells[idx]


def _table_columns(text: str) -> List[Tuple[str, str]]:
    """Columns of the comment table whose header reads ``Name|Column  Type  ...``."""
    lines = text.splitlines()
    out: List[Tuple[str, str]] = []
    for i, line in enumerate(lines):
        if re.match(r"^#\s*(Name|Column)\s+Type\b", line):
            for row in lines[i + 1 :]:
                body = row[1:] if row.startswith("#") else None
                if body is None or not body.strip():
                    if out:
                        break
                    continue
                if re.match(r"^\s*-{5,}", body):
                    if out:
                        break
                    continue
                parsed = _table_row(body)
                if parsed is None:
                    break
                out.append(parsed)
            break
    return out


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        if isinstance(node, ast.Name) and node.id in ("nan", "NaN"):
            return None
        raise


def _list_calls(
    tree: ast.AST, attr: str, keyword: str
) -> Iterator[Tuple[ast.List, Dict[str, ast.expr]]]:
    """``(first argument, keywords)`` of every ``<x>.<attr>([...], <keyword>=..., ...)`` call in
    ``tree``."""
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == attr):
            continue
        kw = {k.arg: k.value for k in node.keywords if k.arg}
        if keyword in kw and node.args and isinstance(node.args[0], ast.List):
            yield node.args[0], kw


def _series_values(tree: ast.AST) -> Dict[str, Tuple[str, List[Any]]]:
    """``name -> (dtype, values)`` of every ``pd.Series([...], name=..., dtype=...)`` call."""
    found: Dict[str, Tuple[str, List[Any]]] = {}
    for items, kw in _list_calls(tree, "Series", "name"):
        try:
            name = _literal(kw["name"])
            dtype = _literal(kw["dtype"]) if "dtype" in kw else "object"
            values = [_literal(e) if not isinstance(e, ast.Name) else None for e in items.elts]
        except (ValueError, SyntaxError):
            continue
        if isinstance(name, str) and name not in found:
            found[name] = (str(dtype), values)
    return found


def _frame_rows(tree: ast.AST) -> Tuple[List[str], List[List[Any]]]:
    """Column names and rows of a ``pd.DataFrame([[...], ...], columns=...)`` call."""
    lists: Dict[str, List[Any]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.List):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    try:
                        lists[target.id] = _literal(node.value)
                    except (ValueError, SyntaxError):
                        continue
    for items, kw in _list_calls(tree, "DataFrame", "columns"):
        cols_node = kw["columns"]
        try:
            if isinstance(cols_node, ast.Name):
                columns = lists.get(cols_node.id)
            else:
                columns = _literal(cols_node)
            rows = [_literal(r) for r in items.elts]
        except (ValueError, SyntaxError):
            continue
        if isinstance(columns, list) and all(isinstance(r, (list, tuple)) for r in rows):
            return [str(c) for c in columns], [list(r) for r in rows]
    return [], []


def _summary_target(folder: Path) -> Optional[str]:
    for z in sorted(folder.glob(SUMMARY_ZIP_GLOB)):
        try:
            with zipfile.ZipFile(z) as zf:
                names = [n for n in zf.namelist() if n.endswith("summary.json")]
                if names:
                    target = json.loads(zf.read(names[0])).get("target")
                    if isinstance(target, str):
                        return target
        except (OSError, ValueError, zipfile.BadZipFile):
            continue
    return None


def _convert(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "double":
        if isinstance(value, str) and value.strip().lower() in ("", "nan", "none", "na", "?"):
            return None
        try:
            number = float(value)
        except (TypeError, ValueError):
            return None
        return None if math.isnan(number) else number
    if kind == "boolean":
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes")
        return bool(value)
    return str(value)


def read_input_spec(pipeline: ScoringPipeline, rows: int = EXAMPLE_ROWS) -> InputSpec:
    """Derive typed input columns and example rows from ``example.py`` and the column stats.

    Raises:
        PipelineError: neither file yields the input columns.
    """
    folder = pipeline.folder
    example = folder / EXAMPLE_FILE_NAME
    stats_file = folder / COLUMN_STATS_FILE_NAME
    table: List[Tuple[str, str]] = []
    series: Dict[str, Tuple[str, List[Any]]] = {}
    if example.is_file():
        text = example.read_text(errors="replace")
        table = _table_columns(text)
        try:
            tree = ast.parse(text)
        except SyntaxError:
            tree = None
        if tree is not None:
            series = _series_values(tree)
            frame_columns, frame_rows = _frame_rows(tree)
            for k, name in enumerate(frame_columns):
                if name not in series:
                    values = [r[k] if k < len(r) else None for r in frame_rows]
                    series[name] = ("object", values)
    stats = read_column_stats(stats_file) if stats_file.is_file() else {}

    if table:
        names = [n for n, _ in table]
        types = dict(table)
    elif series:
        names = list(series)
        types = {n: d for n, (d, _) in series.items()}
    elif stats:
        target = _summary_target(folder)
        names = [n for n in stats if n != target]
        types = {}
    else:
        raise PipelineError(
            f"{folder}: cannot tell the input columns: {EXAMPLE_FILE_NAME} has no column table "
            f"and {COLUMN_STATS_FILE_NAME} is missing — re-export the pipeline from DAI"
        )
    columns = []
    for name in names:
        dai_type = types.get(name) or stats.get(name, {}).get("data_type") or "str"
        columns.append((name, mlflow_type(dai_type)))
    samples = {}
    for name, kind in columns:
        values = series[name][1] if name in series else stats.get(name, {}).get("data", [])
        samples[name] = [_convert(v, kind) for v in values]
    n = min([len(v) for v in samples.values() if v] or [0])
    n = min(max(n, 1), rows)
    example_rows = []
    for i in range(n):
        example_rows.append(
            tuple(samples[name][i] if i < len(samples[name]) else None for name, _ in columns)
        )
    return InputSpec(columns=tuple(columns), rows=tuple(example_rows))


def example_frame(spec: InputSpec) -> Any:
    """The input example as a pandas DataFrame with the signature's dtypes."""
    import pandas as pd

    frame = pd.DataFrame([list(r) for r in spec.rows], columns=spec.names)
    for name, kind in spec.columns:
        if kind == "double":
            frame[name] = pd.to_numeric(frame[name]).astype("float64")
        elif kind == "boolean":
            frame[name] = frame[name].astype("bool")
        else:
            frame[name] = frame[name].astype("object")
    return frame


def build_signature(spec: InputSpec, output_columns: Sequence[str] = ()) -> Any:
    """MLflow ``ModelSignature``: typed inputs, double outputs (when known), params schema."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema([ColSpec(kind, name) for name, kind in spec.columns])
    outputs = Schema([ColSpec("double", c) for c in output_columns]) if output_columns else None
    params = ParamSchema([ParamSpec(name, "boolean", default) for name, default in PARAMS])
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def model_config_columns(spec: InputSpec) -> List[List[str]]:
    """``[[name, type], ...]`` for the pyfunc's ``model_config``."""
    return [[n, t] for n, t in spec.columns]
