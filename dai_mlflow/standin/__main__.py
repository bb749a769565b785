"""CLI: ``python -m dai_mlflow.standin --out DIR --dai-version 1.10|2 --problem PROBLEM``.

Writes ``DIR/scorer.zip`` (and ``DIR/scoring-pipeline/``, ``DIR/license.sig``,
``DIR/sample_input.csv``, ``DIR/holdout.csv``) and prints where they are.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from dai_mlflow.cli import HELP, echo_fields, entry_point
from dai_mlflow.standin.builder import build_pipeline
from dai_mlflow.standin.lines import DAI_LINES, PROBLEMS


@click.command(
    name="python -m dai_mlflow.standin",
    context_settings=HELP,
    help="Build a DAI-shaped stand-in Python scoring pipeline (scorer.zip).",
)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="output folder")
@click.option(
    "--dai-version", type=click.Choice(sorted(DAI_LINES)), default="1.10", show_default=True
)
@click.option("--problem", type=click.Choice(PROBLEMS), default="binary", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def cli(out: Path, dai_version: str, problem: str, seed: int) -> None:
    """Build, print a summary."""
    started = time.monotonic()
    try:
        build = build_pipeline(out, dai_version, problem, seed)
    except OSError as e:
        raise click.ClickException(str(e)) from e
    click.echo(
        f"built DAI {build.dai_version} {build.problem} stand-in pipeline "
        f"(Python {build.python}, target {build.target!r}) in {time.monotonic() - started:.1f}s"
    )
    echo_fields(
        scorer_zip=build.zip_path,
        license=build.license_path,
        sample_input=build.sample_input_csv,
        holdout=build.holdout_csv,
    )


main = entry_point(cli)


if __name__ == "__main__":
    sys.exit(main())
