"""Command lines of the ``validate``, ``batch`` and ``monitor`` entry points (``MLproject``).

``python -m dai_mlflow.lifecycle validate --model-name NAME --holdout PATH``
``python -m dai_mlflow.lifecycle batch --model-name NAME --input PATH --table DIR [--date D]
[--overwrite true]``
``python -m dai_mlflow.lifecycle monitor --model-name NAME --table DIR --output DIR [--date D]
[--overwrite true]``
``python -m dai_mlflow.lifecycle deploy --model-name NAME [--target local|databricks] ...``
``python -m dai_mlflow.lifecycle undeploy --model-name NAME`` (stops a local endpoint)

Each command parses options, points MLflow at the tracking store (:mod:`dai_mlflow.tracking`:
the embedded default, bridged for mlflow 2.17), calls one library function and prints a
``key=value`` summary as the last stdout line. Expected failures are one line on stderr and
exit code 1 (the MLflow run then ends FAILED).
"""

from __future__ import annotations

from pathlib import Path

import click

from dai_mlflow.cli import entry_point
from dai_mlflow.errors import DaiMlflowError

MODEL_NAME = click.option("--model-name", required=True, help="registered model name")


def true_false(flag: str, default: str, help: str):  # noqa: A002, ANN201 - a click option
    """A ``true``/``false`` option (MLproject passes parameters as strings)."""
    return click.option(
        flag, type=click.Choice(["true", "false"]), default=default, show_default=True, help=help
    )


DATE = click.option(
    "--date", "day", default="", help="partition date YYYY-MM-DD (empty: today, UTC)"
)


def _tracked(fn, *args):  # noqa: ANN001, ANN202 - runs fn inside the chosen tracking store
    from dai_mlflow.tracking import tracking_store

    try:
        with tracking_store():
            return fn(*args)
    except DaiMlflowError as e:
        raise click.ClickException(" ".join(str(e).split("\n"))) from e


@click.group(name="dai-mlflow-lifecycle")
def main() -> None:
    """Champion/challenger gate, batch scoring and drift monitoring of a registered DAI model."""


@main.command()
@MODEL_NAME
@click.option(
    "--holdout",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="labelled holdout, csv or parquet (the model's inputs + the target column)",
)
@click.option("--target", default="", help="target column (empty: found from the outputs)")
def validate(model_name: str, holdout: Path, target: str) -> None:
    """Score @challenger and @champion on HOLDOUT; promote the challenger only if better."""
    from dai_mlflow.lifecycle.validate import ValidateRequest
    from dai_mlflow.lifecycle.validate import validate as run_validate

    try:
        request = ValidateRequest(model_name.strip(), holdout, target.strip() or None)
    except DaiMlflowError as e:
        raise click.ClickException(str(e)) from e
    result = _tracked(run_validate, request)
    champion = f"models:/{model_name}/{result.champion_version}"
    click.echo(f"decision={result.decision} champion={champion}")


@main.command()
@MODEL_NAME
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--table", required=True, help="output table folder (date-partitioned parquet)")
@DATE
@click.option("--alias", default="champion", show_default=True, help="alias of the version")
@click.option(
    "--env-manager",
    type=click.Choice(["local", "uv", "virtualenv"]),
    default="local",
    show_default=True,
    help="local: the champion's Spark venv; uv/virtualenv: MLflow rebuilds the model env",
)
@click.option(
    "--spark-venv",
    default="",
    help="where the champion's Spark venv is built/reused (empty: venvs/spark_inference)",
)
@click.option("--master", default="local[*]", show_default=True, help="Spark master")
@click.option(
    "--python", "executor_python", default="", help="the executors' Python (empty: theirs)"
)
@true_false(
    "--overwrite",
    "false",
    "write into a folder that is not a table of ours (never one holding the input)",
)
def batch(
    model_name: str,
    input_path: Path,
    table: str,
    day: str,
    alias: str,
    env_manager: str,
    spark_venv: str,
    master: str,
    executor_python: str,
    overwrite: str,
) -> None:
    """Score INPUT with NAME@champion; replace the date's partition of TABLE."""
    from dai_mlflow.lifecycle.batch import BatchRequest
    from dai_mlflow.lifecycle.batch import batch as run_batch

    try:
        request = BatchRequest(
            model_name.strip(), input_path, table, day.strip(), alias.strip() or "champion",
            env_manager, Path(spark_venv) if spark_venv.strip() else None, master,
            executor_python.strip(), overwrite == "true",
        )  # fmt: skip
    except DaiMlflowError as e:
        raise click.ClickException(str(e)) from e
    result = _tracked(run_batch, request)
    click.echo(f"rows={result.rows} partition={result.partition} model_uri={result.model_uri}")


@main.command()
@MODEL_NAME
@click.option("--table", required=True, help="the batch output table folder")
@click.option("--output", required=True, help="monitoring table folder (date-partitioned)")
@DATE
@click.option("--days", type=int, default=1, show_default=True, help="partitions in the window")
@true_false(
    "--overwrite",
    "false",
    "write into a folder that is not a table of ours (never one holding the input)",
)
def monitor(model_name: str, table: str, output: str, day: str, days: int, overwrite: str) -> None:
    """Drift of the window's inputs and predictions against the training baseline."""
    from dai_mlflow.lifecycle.monitor import MonitorRequest, summary
    from dai_mlflow.lifecycle.monitor import monitor as run_monitor

    try:
        request = MonitorRequest(
            model_name.strip(), table, output, day.strip(), days, overwrite == "true"
        )
    except DaiMlflowError as e:
        raise click.ClickException(str(e)) from e
    result = _tracked(run_monitor, request)
    click.echo(f"partition={result.partition}")
    click.echo(summary(result))


@main.command()
@MODEL_NAME
@click.option(
    "--target",
    type=click.Choice(["local", "docker", "databricks"]),
    default="local",
    show_default=True,
    help="local: an endpoint on a stable port here; docker: the same, served by a container of "
    "the model's DAI image (docs/image.md); databricks: a Model Serving endpoint",
)
@click.option("--port", type=int, default=5050, show_default=True, help="local: stable port")
@click.option("--host", default="127.0.0.1", show_default=True, help="local: address to bind")
@true_false("--rpc", "false", "local: also serve DAI's JSON-RPC protocol on POST /rpc")
@click.option("--endpoint-name", default="", help="databricks: endpoint (empty: the model name)")
@click.option("--secret-scope", default="dai-mlflow", show_default=True, help="databricks")
@click.option(
    "--secret-key",
    default="driverless-ai-license-key",
    show_default=True,
    help="databricks: the secret holding the license (referenced, never read)",
)
@click.option("--workload-size", default="Small", show_default=True, help="databricks")
@true_false("--scale-to-zero", "true", "databricks")
@click.option(
    "--wait-minutes", type=float, default=30.0, show_default=True, help="databricks: for READY"
)
def deploy(
    model_name: str,
    target: str,
    port: int,
    host: str,
    rpc: str,
    endpoint_name: str,
    secret_scope: str,
    secret_key: str,
    workload_size: str,
    scale_to_zero: str,
    wait_minutes: float,
) -> None:
    """Deploy the version NAME@champion points at (by its number)."""
    from dai_mlflow.lifecycle.deploy import DeployRequest
    from dai_mlflow.lifecycle.deploy import deploy as run_deploy

    try:
        request = DeployRequest(
            model_name.strip(), target, port, host.strip(), rpc == "true", None,
            endpoint_name.strip(), secret_scope.strip(), secret_key.strip(),
            workload_size.strip(), scale_to_zero == "true", wait_minutes,
        )  # fmt: skip
    except DaiMlflowError as e:
        raise click.ClickException(str(e)) from e
    result = _tracked(run_deploy, request)
    click.echo(
        f"{result.status}={result.model_uri} target={result.target} endpoint={result.endpoint_url}"
    )


@main.command()
@MODEL_NAME
def undeploy(model_name: str) -> None:
    """Stop NAME's local endpoint (front proxy and servers)."""
    from dai_mlflow.lifecycle.deploy import undeploy as run_undeploy

    result = _tracked(run_undeploy, model_name.strip())
    click.echo(f"undeployed={result.url} version={result.version}")


run = entry_point(main)
