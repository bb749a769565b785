"""Signature, input example and params schema from example.py and the column stats."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from dai_mlflow.errors import PipelineError
from dai_mlflow.log.pipeline import open_pipeline
from dai_mlflow.log.signature import build_signature, example_frame, read_input_spec


@pytest.mark.parametrize("line", ["1.10", "2"])
@pytest.mark.parametrize("problem", ["regression", "binary", "multiclass"])
def test_standin_columns_types_and_example(standin, line: str, problem: str) -> None:
    build = standin(line, problem)
    spec = read_input_spec(open_pipeline(build.folder))
    assert spec.names == list(build.input_columns)
    stats = json.loads((build.folder / "training_data_column_stats.json").read_text())
    for name, kind in spec.columns:
        want = "string" if stats[name]["data_type"] == "str" else "double"
        assert kind == want, name
    frame = example_frame(spec)
    assert list(frame.columns) == spec.names
    assert len(frame) >= 1
    for name, kind in spec.columns:
        assert (frame[name].dtype == "float64") == (kind == "double")
    sample = pd.read_csv(build.sample_input_csv)
    assert set(sample.columns) >= set(spec.names)


def test_signature_has_params_and_optional_outputs(standin) -> None:
    spec = read_input_spec(open_pipeline(standin("1.10", "binary").folder))
    sig = build_signature(spec)
    assert sig.outputs is None
    assert {p.name: (p.dtype.name, p.default) for p in sig.params} == {
        "pred_contribs": ("boolean", False),
        "output_margin": ("boolean", False),
    }
    sig = build_signature(spec, ["t.a", "t.b"])
    assert sig.outputs.input_names() == ["t.a", "t.b"]
    assert sig.inputs.input_names() == spec.names


REAL_SHAPED_EXAMPLE = """
import pandas as pd
from scoring_h2oai_experiment_abc import Scorer
# ----------------------------------------------------------
# Name   Type      Range
# ----------------------------------------------------------
# x1     float32   [-3.0, 2.7]
# my col object    -
# n      int32     [0, 9]
# ----------------------------------------------------------
scorer = Scorer()
columns = [
    pd.Series(['-2.6', '1.5', None], name='x1', dtype='float32'),
    pd.Series(['a', 'b', 'a'], name='my col', dtype='object'),
    pd.Series(['1', '2', '3'], name='n', dtype='int32'),
]
"""


def test_dai_series_style_example(standin, tmp_path: Path) -> None:
    """DAI's own example.py style: a bare-name table and one pd.Series per column."""
    folder = tmp_path / "sp"
    shutil.copytree(standin("1.10", "binary").folder, folder)
    (folder / "example.py").write_text(REAL_SHAPED_EXAMPLE)
    spec = read_input_spec(open_pipeline(folder))
    assert spec.columns == (("x1", "double"), ("my col", "string"), ("n", "double"))
    assert spec.rows[0] == (-2.6, "a", 1.0)
    assert spec.rows[2][0] is None


def test_stats_only(standin, tmp_path: Path) -> None:
    build = standin("2", "regression")
    folder = tmp_path / "sp"
    shutil.copytree(build.folder, folder)
    (folder / "example.py").unlink()
    spec = read_input_spec(open_pipeline(folder))
    assert spec.names == list(build.input_columns)
    assert build.target not in spec.names


def test_no_source_is_an_error(standin, tmp_path: Path) -> None:
    folder = tmp_path / "sp"
    shutil.copytree(standin("2", "regression").folder, folder)
    (folder / "example.py").unlink()
    (folder / "training_data_column_stats.json").unlink()
    with pytest.raises(PipelineError) as e:
        read_input_spec(open_pipeline(folder))
    assert "input columns" in str(e.value)
    assert "\n" not in str(e.value)
