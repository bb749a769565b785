"""Batch scoring of logged DAI models on Spark (see :mod:`dai_mlflow.spark.scoring`).

The public API, importable from here: :func:`score`, :func:`score_to_path`, :func:`read_input`,
:func:`translate_error`, :func:`download_model`, :func:`precheck`, :func:`preflight_predict`,
:class:`ModelSpec` and the errors. :mod:`.worker` is what runs on executors; :mod:`.shipping`
what the driver sends them; :mod:`.files` reads inputs and writes outputs all or nothing.
"""

# Re-exported as the package's public API (ruff: F401 is off for this file).
from dai_mlflow.spark.files import (
    INPUT_FORMATS,
    OutputPathError,
    OutputRefusedError,
    SparkScoringError,
    input_columns,
    read_input,
    validate_output,
    write_atomically,
)
from dai_mlflow.spark.scoring import (
    DEFAULT_BATCH_SIZE,
    ERROR_MARKER,
    InputColumnsError,
    ModelSignatureError,
    ModelSpec,
    download_model,
    precheck,
    preflight_predict,
    score,
    score_to_path,
    translate_error,
)
