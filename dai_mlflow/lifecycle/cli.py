"""Command lines of the lifecycle entry points: ``python -m dai_mlflow.lifecycle
validate|batch|monitor|deploy|undeploy ...`` (``MLproject`` runs the same).

Each command parses options, points MLflow at the tracking store (:mod:`dai_mlflow.tracking`),
calls one library function and prints a ``key=value`` summary as the last stdout line (scripts
parse it). Errors are :func:`dai_mlflow.cli.run_click`'s one line and exit 1. Option defaults
come from the request dataclasses. Python 3.8-safe: runs in the project env.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import click

from dai_mlflow.cli import entry_point
from dai_mlflow.envs.model_env import ENV_MANAGERS
from dai_mlflow.lifecycle.batch_job import DEFAULT_MASTER
from dai_mlflow.lifecycle.deploy.request import TARGETS, DeployRequest
from dai_mlflow.tracking import CHAMPION

MODEL_NAME = click.option("--model-name", required=True, help="registered model name")
DATE = click.option(
    "--date", "day", default="", help="partition date YYYY-MM-DD (empty: today, UTC)"
)
# MLproject passes "true"/"false"; click.BOOL reads those (and 1/0, yes/no).
OVERWRITE = click.option(
    "--overwrite",
    type=click.BOOL,
    default=False,
    show_default=True,
    help="write into a folder that is not a table of ours (never one holding the input)",
)


def _default(request_type: type, name: str) -> Any:
    """The default of a request dataclass field: the one place it is written."""
    return next(f.default for f in dataclasses.fields(request_type) if f.name == name)


def _tracked(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` inside the chosen tracking store."""
    from dai_mlflow.tracking import tracking_store

    with tracking_store():
        return fn(*args)


@click.group(name="dai-mlflow-lifecycle")
def main() -> None:
    """Champion/challenger gate, deployment, batch scoring and drift monitoring of a registered
    DAI model."""


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

    request = ValidateRequest(model_name.strip(), holdout, target.strip() or None)
    result = _tracked(run_validate, request)
    champion = f"models:/{model_name}/{result.champion_version}"
    click.echo(f"decision={result.decision} champion={champion}")


@main.command()
@MODEL_NAME
@click.option("--input", "input_path", required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--table", required=True, help="output table folder (date-partitioned parquet)")
@DATE
@click.option("--alias", default=CHAMPION, show_default=True, help="alias of the version")
@click.option(
    "--env-manager",
    type=click.Choice(ENV_MANAGERS),
    default=ENV_MANAGERS[0],
    show_default=True,
    help="local: the champion's Spark venv; uv/virtualenv: MLflow rebuilds the model env",
)
@click.option(
    "--spark-venv",
    default="",
    help="where the champion's Spark venv is built/reused (empty: venvs/spark_inference)",
)
@click.option("--master", default=DEFAULT_MASTER, show_default=True, help="Spark master")
@click.option(
    "--python", "executor_python", default="", help="the executors' Python (empty: theirs)"
)
@OVERWRITE
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
    overwrite: bool,
) -> None:
    """Score INPUT with NAME@champion; replace the date's partition of TABLE."""
    from dai_mlflow.lifecycle.batch import BatchRequest
    from dai_mlflow.lifecycle.batch import batch as run_batch

    request = BatchRequest(
        model_name=model_name.strip(),
        input=input_path,
        table=table,
        day=day.strip(),
        alias=alias.strip() or CHAMPION,
        env_manager=env_manager,
        spark_venv=Path(spark_venv) if spark_venv.strip() else None,
        master=master,
        python=executor_python.strip(),
        overwrite=overwrite,
    )
    result = _tracked(run_batch, request)
    click.echo(f"rows={result.rows} partition={result.partition} model_uri={result.model_uri}")


@main.command()
@MODEL_NAME
@click.option("--table", required=True, help="the batch output table folder")
@click.option("--output", required=True, help="monitoring table folder (date-partitioned)")
@DATE
@click.option("--days", type=int, default=1, show_default=True, help="partitions in the window")
@OVERWRITE
def monitor(model_name: str, table: str, output: str, day: str, days: int, overwrite: bool) -> None:
    """Drift of the window's inputs and predictions against the training baseline."""
    from dai_mlflow.lifecycle.monitor import MonitorRequest, summary
    from dai_mlflow.lifecycle.monitor import monitor as run_monitor

    request = MonitorRequest(model_name.strip(), table, output, day.strip(), days, overwrite)
    result = _tracked(run_monitor, request)
    click.echo(f"partition={result.partition}")
    click.echo(summary(result))


@main.command()
@MODEL_NAME
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default=_default(DeployRequest, "target"),
    show_default=True,
    help="local: an endpoint on a stable port here; docker: the same, served by a container of "
    "the model's DAI image (docs/image.md); databricks: a Model Serving endpoint",
)
@click.option(
    "--port",
    type=int,
    default=_default(DeployRequest, "port"),
    show_default=True,
    help="local: stable port",
)
@click.option(
    "--host",
    default=_default(DeployRequest, "host"),
    show_default=True,
    help="local: address to bind",
)
@click.option(
    "--rpc",
    type=click.BOOL,
    default=_default(DeployRequest, "rpc"),
    show_default=True,
    help="local: also serve DAI's JSON-RPC protocol on POST /rpc",
)
@click.option("--endpoint-name", default="", help="databricks: endpoint (empty: the model name)")
@click.option(
    "--secret-scope",
    default=_default(DeployRequest, "secret_scope"),
    show_default=True,
    help="databricks",
)
@click.option(
    "--secret-key",
    default=_default(DeployRequest, "secret_key"),
    show_default=True,
    help="databricks: the secret holding the license (referenced, never read)",
)
@click.option(
    "--workload-size",
    default=_default(DeployRequest, "workload_size"),
    show_default=True,
    help="databricks",
)
@click.option(
    "--scale-to-zero",
    type=click.BOOL,
    default=_default(DeployRequest, "scale_to_zero"),
    show_default=True,
    help="databricks",
)
@click.option(
    "--wait-minutes",
    type=float,
    default=_default(DeployRequest, "wait_minutes"),
    show_default=True,
    help="databricks: for READY",
)
def deploy(
    model_name: str,
    target: str,
    port: int,
    host: str,
    rpc: bool,
    endpoint_name: str,
    secret_scope: str,
    secret_key: str,
    workload_size: str,
    scale_to_zero: bool,
    wait_minutes: float,
) -> None:
    """Deploy the version NAME@champion points at (by its number)."""
    from dai_mlflow.lifecycle.deploy.run import deploy as run_deploy

    request = DeployRequest(
        model_name=model_name.strip(),
        target=target,
        port=port,
        host=host.strip(),
        rpc=rpc,
        endpoint_name=endpoint_name.strip(),
        secret_scope=secret_scope.strip(),
        secret_key=secret_key.strip(),
        workload_size=workload_size.strip(),
        scale_to_zero=scale_to_zero,
        wait_minutes=wait_minutes,
    )
    result = _tracked(run_deploy, request)
    click.echo(
        f"{result.status}={result.model_uri} target={result.target} endpoint={result.endpoint_url}"
    )


@main.command()
@MODEL_NAME
def undeploy(model_name: str) -> None:
    """Stop NAME's local endpoint (front proxy and servers)."""
    from dai_mlflow.lifecycle.deploy.local import undeploy as run_undeploy

    result = _tracked(run_undeploy, model_name.strip())
    click.echo(f"undeployed={result.url} version={result.version}")


run = entry_point(main)
