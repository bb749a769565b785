"""DAI-shaped stand-in scoring pipeline builder: the fixture of every test and of ``make demo``.

A real DAI pipeline is proprietary, so this package builds one of the same shape, written for
this project (no H2O.ai code or text): ``scorer.zip`` with an experiment wheel, a ``h2oaicore``
runtime wheel, requirement files a packager must clean, a really trained model and DAI's
runtime quirks (license, ``./tmp`` in the cwd, slow start, ``fileno()`` at import).
API: :func:`build_pipeline` → :class:`StandinBuild`; CLI: ``python -m dai_mlflow.standin``.
"""

from __future__ import annotations

from dai_mlflow.standin.builder import (
    HOLDOUT_NAME,
    LICENSE_FILE_NAME,
    SAMPLE_INPUT_NAME,
    SCORER_ZIP_NAME,
    StandinBuild,
    StandinError,
    build_pipeline,
    builder_fingerprint,
    experiment_key,
    load_build,
    module_name_for,
)
from dai_mlflow.standin.lines import DAI_LINES, PROBLEMS

__all__ = [
    "DAI_LINES",
    "HOLDOUT_NAME",
    "LICENSE_FILE_NAME",
    "PROBLEMS",
    "SAMPLE_INPUT_NAME",
    "SCORER_ZIP_NAME",
    "StandinBuild",
    "StandinError",
    "build_pipeline",
    "experiment_key",
    "builder_fingerprint",
    "load_build",
    "module_name_for",
]
