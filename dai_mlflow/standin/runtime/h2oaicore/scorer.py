"""The ``Scorer`` base class every stand-in experiment wheel subclasses; DAI's API and quirks.

Constructing a scorer, like DAI's, (1) creates ``./tmp/`` under the *current working
directory* and writes the experiment log there, so it fails in a read-only directory; (2)
requires a valid license (see :mod:`h2oaicore.licensing`). Like exported DAI 1.x pipelines, a
1.x runtime that cannot accept the license logs where it looked and why on stderr, then ends
the process with ``sys.exit(-1)``; a 2.x runtime raises ``LicenseError``; (3) takes at least
``MIN_STARTUP_SECONDS``: DAI starts its license manager and a recipe server here, which this
stand-in represents by waiting out the remainder. Build it once, score many times.

Scoring itself is plain vectorised numpy/pandas (:mod:`h2oaicore.engine`). Python 3.8+.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from typing import Any, List, Optional, Sequence

import numpy as np
import pandas as pd

from . import STANDIN_NOTICE, __version__
from .engine import Model, first_row, optional_labels, row_frame
from .licensing import (
    DEFAULT_LICENSE_PATH,
    ENV_LICENSE_FILE,
    ENV_LICENSE_KEY,
    LicenseError,
    load_license,
)

MIN_STARTUP_SECONDS = 0.6
TMP_DIR_NAME = "tmp"


class StandinScorer:
    """Scores one experiment; subclasses set ``_package_dir`` and ``_experiment_key``."""

    _package_dir = ""
    _experiment_key = ""
    _model_file = "fitted_model.json"

    def __init__(self) -> None:
        started = time.monotonic()
        tmp_dir = os.path.join(".", TMP_DIR_NAME)
        os.makedirs(
            os.path.join(tmp_dir, f"h2oai_experiment_{self._experiment_key}"), exist_ok=True
        )
        self._log_path = os.path.join(tmp_dir, f"h2oai_experiment_{self._experiment_key}.log")
        self._log(STANDIN_NOTICE)
        self._log("License manager initialized", console=True)
        try:
            source, fields = load_license()
        except LicenseError as e:
            if not __version__.startswith("1."):
                raise
            self._log(
                f"Looked for a license in {ENV_LICENSE_KEY}, {ENV_LICENSE_FILE} and "
                f"{DEFAULT_LICENSE_PATH}",
                console=True,
            )
            self._log(f"License check failed: {e}", console=True, level="ERROR")
            sys.exit(-1)
        serial = fields.get("serial_number", "?")
        self._log(f"License is valid (from {source}, serial {serial})", console=True)
        with open(os.path.join(self._package_dir, self._model_file), encoding="utf-8") as f:
            self._model = Model(json.load(f))
        self._log(f"experiment_tmp_dir = ./tmp/h2oai_experiment_{self._experiment_key}")
        remaining = MIN_STARTUP_SECONDS - (time.monotonic() - started)
        if remaining > 0:
            time.sleep(remaining)
        self._log(f"Scorer ready in {time.monotonic() - started:.2f}s")

    def _log(self, message: str, console: bool = False, level: str = "INFO") -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        line = f"{stamp} {level} {message}\n"
        with open(self._log_path, "a", encoding="utf-8") as f:
            f.write(line)
        if console:
            # DAI's scorer logs its start-up to the console too; stderr keeps stdout clean.
            sys.stderr.write(line)

    def get_column_names(self) -> List[str]:
        """Input column names, in the order ``score()`` expects values."""
        return self._model.column_names()

    def get_transformed_column_names(self) -> List[str]:
        """Names of the engineered features the model uses."""
        return self._model.feature_names()

    def get_target_labels(self) -> Optional[np.ndarray]:
        """Class labels (numpy array) for classification, None for regression."""
        return optional_labels(self._model.labels)

    def get_pred_columns(
        self, output_margin: bool = False, pred_contribs: bool = False
    ) -> List[str]:
        """Column names ``score_batch`` returns for these flags."""
        return self._model.pred_columns(output_margin, pred_contribs)

    def score(
        self,
        row: Sequence[Any],
        output_margin: bool = False,
        pred_contribs: bool = False,
        apply_data_recipes: bool = False,
    ) -> List[float]:
        """Score one row (values in ``get_column_names()`` order; text or numbers, None = NA)."""
        frame = row_frame(row, self._model.column_names())
        return first_row(self._model.score_frame(frame, output_margin, pred_contribs))

    def score_batch(
        self,
        frame: pd.DataFrame,
        output_margin: bool = False,
        pred_contribs: bool = False,
        fast_approx: bool = False,
        apply_data_recipes: bool = False,
    ) -> pd.DataFrame:
        """Score a pandas DataFrame (columns by name; extra columns are ignored)."""
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"score_batch() takes a pandas DataFrame, got {type(frame).__name__}")
        return self._model.score_frame(frame, output_margin, pred_contribs)
