"""Text files of a stand-in pipeline: the experiment module, example.py, run_example.sh, README.

Shaped like the files DAI exports, but written for this project; every file says it is a
stand-in.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Sequence

from dai_mlflow.standin.lines import DaiLine

NOTICE = (
    "dai-mlflow stand-in: a DAI-shaped scoring pipeline written for the dai-mlflow project. "
    "It contains no H2O.ai code or text."
)

_INIT_TEMPLATE = '''"""Scoring module of experiment {key} ({notice})

Usage, as with DAI: ``from {module} import Scorer; scorer = Scorer()`` (needs a license).
"""

import sys

# Native libraries loaded by DAI scorers query the process's stdout/stderr file descriptors
# while importing; a host that swapped the streams for objects without fileno() fails here.
sys.stdout.fileno()
sys.stderr.fileno()

from .scorer import SCORING_MODULE_HASH, Scorer  # noqa: E402

__all__ = ["Scorer", "SCORING_MODULE_HASH"]
'''

_SCORER_TEMPLATE = '''"""The Scorer of experiment {key} ({notice})"""

import os

from h2oaicore.scorer import StandinScorer as _StandinScorer

SCORING_MODULE_HASH = "{key}"


class Scorer(_StandinScorer):
    """Scorer of experiment {key}: ``score``, ``score_batch`` and friends (DAI's API)."""

    _package_dir = os.path.dirname(os.path.abspath(__file__))
    _experiment_key = "{key}"
'''


def experiment_module(key: str, module: str) -> Dict[str, str]:
    """Sources of the experiment package: ``__init__.py`` and its ``scorer`` submodule."""
    return {
        f"{module}/__init__.py": _INIT_TEMPLATE.format(key=key, module=module, notice=NOTICE),
        f"{module}/scorer.py": _SCORER_TEMPLATE.format(key=key, notice=NOTICE),
    }


def _range(stats: Dict[str, Any]) -> str:
    if "min" in stats:
        return f"[{stats['min']}, {stats['max']}]"
    return "levels: " + ", ".join(repr(level) for level in stats["levels"])


# DAI data type -> the dtype example.py shows in its header / builds its frame with.
_HEADER_TYPES = {"real": "float32", "int": "int32", "str": "str"}
_FRAME_DTYPES = {"real": "float32", "int": "float32", "str": "object"}


def _text(value: Any) -> str:
    return "None" if value is None else repr(str(value))


def example_py(
    module: str,
    columns: Sequence[str],
    stats: Dict[str, Dict[str, Any]],
    rows: List[List[Any]],
    n_single: int = 5,
) -> str:
    """A DAI-shaped example.py: a header table of the input columns, ``score`` on single rows
    (values as text, one per line with the column as comment), ``score_batch`` on a frame built
    from one ``pd.Series(..., name=..., dtype=...)`` per column, contributions, column names."""
    width = max(len(c) for c in columns) + 2
    rule = "# " + "-" * (width + 10 + 40)
    table = [rule, f"# {'Name':<{width}} {'Type':<9} Range", rule]
    for name in columns:
        st = stats[name]
        table.append(f"# {name:<{width}} {_HEADER_TYPES[st['data_type']]:<9} {_range(st)}")
    table.append(rule)
    singles = []
    for row in rows[:n_single]:
        values = "".join(f"    {_text(v)},  # {c}\n" for c, v in zip(columns, row))
        singles.append(f"print(scorer.score([\n{values}], apply_data_recipes=False))")
    series = []
    for j, name in enumerate(columns):
        values = ", ".join(_text(row[j]) for row in rows)
        dtype = _FRAME_DTYPES[stats[name]["data_type"]]
        series.append(f"    pd.Series([{values}], name={name!r}, dtype={dtype!r}),")
    first = "".join(f"    {_text(v)},  # {c}\n" for c, v in zip(columns, rows[0]))
    return f'''"""Example of scoring with this pipeline ({NOTICE})

Run it with ``bash run_example.sh`` (installs the requirements into ./env first) or, in an env
that has them, ``python example.py``. A license is required: set DRIVERLESS_AI_LICENSE_KEY or
DRIVERLESS_AI_LICENSE_FILE, or put it at ~/.driverlessai/license.sig.
"""
import pandas as pd

from {module} import Scorer

# Input record of Scorer.score(): one value per column, in this order.
#
{chr(10).join(table)}

# Constructing a Scorer is slow (license check, start-up): make one and reuse it.
scorer = Scorer()

# One row per call; values may be text, as here, or numbers; None is a missing value.
print("---------- score one row ----------")
{chr(10).join(singles)}

# Many rows per call: a pandas frame with the input columns (far faster than row by row).
print("---------- score a frame ----------")
columns = [
{chr(10).join(series)}
]
df = pd.concat(columns, axis=1)
print(scorer.score_batch(df, apply_data_recipes=False))

# Contributions per transformed feature, in margin (link) space: together with the bias they
# add up to the margin that output_margin=True returns (the two flags are exclusive).
print("---------- contributions ----------")
print(scorer.score([
{first}], pred_contribs=True, apply_data_recipes=False))
print(scorer.score_batch(df, pred_contribs=True, fast_approx=True, apply_data_recipes=False))
print(scorer.score_batch(df, output_margin=True, apply_data_recipes=False))

print("---------- column names ----------")
print(scorer.get_column_names())
print(scorer.get_transformed_column_names())
print(scorer.get_target_labels())
'''


def run_example_sh(line: DaiLine) -> str:
    """run_example.sh: a virtualenv of the pipeline's Python, the requirements, example.py."""
    return f"""#!/usr/bin/env bash
# {NOTICE}
# Creates ./env with Python {line.python}, installs requirements.txt under the constraints, and
# runs example.py. Like DAI's, it installs every line: expect h2o4gpu and pyorc to fail.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")"
if [[ "${{SCORING_PIPELINE_INSTALL_DEPENDENCIES:-1}}" == "0" ]]; then
  python{line.python} -m venv --system-site-packages env
  env/bin/python -m pip install scoring_h2oai_experiment_*.whl
else
  python{line.python} -m venv env
  env/bin/python -m pip install -r requirements.txt -c req_constraints_deps.txt
fi
env/bin/python example.py
"""


def readme_txt(line: DaiLine, key: str, module: str, target: str, files: Sequence[str]) -> str:
    """README.txt: what the pipeline is, its files, how to license and run it."""
    listing = "\n".join(f"  {name}" for name in sorted(files))
    return f"""DAI-SHAPED STAND-IN PYTHON SCORING PIPELINE
{NOTICE}

Experiment: {key}   Target: {target}
Imitates: Driverless AI {line.dai_version} (Python {line.python}, x86_64 Linux)

DIRECTORY LISTING
{listing}

QUICK START
  export DRIVERLESS_AI_LICENSE_FILE=/path/to/license.sig   (or DRIVERLESS_AI_LICENSE_KEY=<base64>)
  bash run_example.sh

PYTHON API
  from {module} import Scorer
  scorer = Scorer()                  # slow: build once; writes ./tmp/ in the working directory
  scorer.score([...])                # one row, values in scorer.get_column_names() order
  scorer.score_batch(pandas_frame)   # many rows
  scorer.score_batch(frame, pred_contribs=True)   # contributions in link space, plus bias
  scorer.get_target_labels(), scorer.get_transformed_column_names(), scorer.get_pred_columns()

OUTPUT COLUMNS (scorer.get_pred_columns(output_margin, pred_contribs))
  default            regression: <target>; classification: <target>.<label> per class
  output_margin      regression: <target>; binary: <target>.<positive label> (log-odds);
                     multiclass: <target>.<label> per class (softmax inputs)
  pred_contribs      regression, binary: contrib_<transformed feature> ... contrib_bias;
                     multiclass: that block once per class, each name suffixed .<label>
                     (contrib_<feature>.<label> ... contrib_bias.<label>), classes in label order
  Contributions are exact and in margin space: each block adds up to the margin of its output.
  output_margin and pred_contribs cannot be combined. score() returns the same values, as a list.

LICENSE SPECIFICATION
  The scorer needs a license, looked up in this order:
  DRIVERLESS_AI_LICENSE_KEY (base64 of the license file), DRIVERLESS_AI_LICENSE_FILE (its path),
  ~/.driverlessai/license.sig.
"""


def summary_json(data: Dict[str, Any]) -> bytes:
    """The experiment summary's summary.json."""
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()
