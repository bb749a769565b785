"""Command line of the MLflow Project's ``main`` entry point (``scorer_entry.py`` calls it).

``python scorer_entry.py --pipeline PATH [--model-name NAME] [--alias ALIAS]`` logs the pipeline
in the current MLflow run (see :func:`dai_mlflow.log.run.log_pipeline`) through the tracking store
chosen by :mod:`dai_mlflow.tracking`, and prints ``model_uri=<uri>`` as the last line of stdout.
An empty ``--model-name`` (MLproject's default) means "do not register". Every expected failure
is one line on stderr and exit code 1; the run then ends FAILED.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import click

from dai_mlflow.cli import entry_point
from dai_mlflow.log.requirements import DEFAULT_EXCLUDE, RequirementsPolicy
from dai_mlflow.tracking import CHALLENGER as DEFAULT_ALIAS
from dai_mlflow.tracking import tracking_store

PIPELINE = click.option(
    "--pipeline",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="scorer.zip or scoring-pipeline folder exported by Driverless AI",
)
MODEL_NAME = click.option(
    "--model-name",
    default="",
    show_default=False,
    help="register the model under this name (empty: log only)",
)
ALIAS = click.option(
    "--alias",
    default=DEFAULT_ALIAS,
    show_default=True,
    help="alias of the registered version",
)
EXCLUDE = click.option(
    "--exclude",
    default=",".join(DEFAULT_EXCLUDE),
    show_default=True,
    help="comma-separated projects left out of the model's requirements",
)
INDEX_OPTIONS = click.option(
    "--index-options",
    type=click.Choice(["keep", "drop", "keep-insecure"]),
    default="keep",
    show_default=True,
    help="keep or drop --index-url/--find-links lines of requirements.txt; keep-insecure also "
    "keeps --trusted-host and plain http:// sources (refused otherwise)",
)


@click.command(name="dai-mlflow-log")
@PIPELINE
@MODEL_NAME
@ALIAS
@EXCLUDE
@INDEX_OPTIONS
def main(pipeline: Path, model_name: str, alias: str, exclude: str, index_options: str) -> None:
    """Log a DAI Python scoring pipeline as an MLflow pyfunc model (and register it)."""
    policy = RequirementsPolicy.from_csv(exclude, index_options=index_options)
    # A tracking bridge (if this env needs one) starts first: its server imports MLflow
    # while this process imports it, opens the pipeline, and stages and checks the model.
    with tracking_store(wait=False) as store, tempfile.TemporaryDirectory(
        prefix="dai-mlflow-log-"
    ) as work:
        from dai_mlflow.log.run import LogRequest, log_pipeline, preflight

        request = LogRequest(
            pipeline=pipeline,
            model_name=model_name.strip() or None,
            alias=alias.strip() or DEFAULT_ALIAS,
            policy=policy,
        )
        opened = preflight(request, Path(work))
        result = log_pipeline(request, tracking_ready=store.wait, pipeline=opened)
    sys.stdout.flush()
    print(f"model_uri={result.model_uri}", flush=True)


run = entry_point(main)  # the CLI with argv; its exit code (scorer_entry.py, debuggers)
