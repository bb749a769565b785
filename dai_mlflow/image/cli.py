"""``dai-mlflow``: the console script; ``dai-mlflow image build`` builds a serving image.

Run from ``venvs/launcher`` (or wherever ``pip install dai-mlflow`` put it)::

    dai-mlflow image build --model-uri models:/churn@champion --tag churn:1

Launcher side (Python >= 3.10, mlflow 3.x).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

from dai_mlflow.cli import HELP, echo_fields, entry_point
from dai_mlflow.image.build import PYTHON_SOURCES, BuildRequest, build_image
from dai_mlflow.image.context import Network


@click.group(name="dai-mlflow", context_settings=HELP)
def cli() -> None:
    """dai-mlflow commands (serving images; see docs/image.md)."""


@cli.group(context_settings=HELP)
def image() -> None:
    """Serving images of a DAI version."""


@image.command(context_settings=HELP)
@click.option("--model-uri", required=True, help="models:/NAME@ALIAS, runs:/..., or a path")
@click.option("--tag", required=True, help="the image name, e.g. churn:1")
@click.option(
    "--base-image",
    default="",
    help="base image on the Docker host, never pulled [default: python:<minor>-slim-bookworm]",
)
@click.option("--bake-model", is_flag=True, help="put this model in the image (immutable deploys)")
@click.option(
    "--index-url", default="", help="package index for fetching wheels (pip's --index-url)"
)
@click.option(
    "--ca-certs",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="folder of PEM certificates trusted when fetching and in the image",
)
@click.option("--http-proxy", default="", help="proxy for fetching wheels (http)")
@click.option("--https-proxy", default="", help="proxy for fetching wheels (https)")
@click.option("--no-proxy", default="", help="hosts reached without the proxy")
@click.option(
    "--python",
    "python_source",
    type=click.Choice(PYTHON_SOURCES),
    default="auto",
    show_default=True,
    help="the model's Python: the base image's, or a local CPython build copied in (host)",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="keep the build context and its Dockerfile here (an empty or new folder)",
)
def build(
    model_uri: str,
    tag: str,
    base_image: str,
    bake_model: bool,
    index_url: str,
    ca_certs: Optional[Path],
    http_proxy: str,
    https_proxy: str,
    no_proxy: str,
    python_source: str,
    output_dir: Optional[Path],
) -> int:
    """Build a serving image for MODEL_URI's DAI version; `docker build` runs with no network."""
    network = Network(index_url, http_proxy, https_proxy, no_proxy, ca_certs)
    request = BuildRequest(
        model_uri=model_uri, tag=tag, base_image=base_image, bake_model=bake_model,
        python_source=python_source, output_dir=output_dir, network=network,
    )  # fmt: skip
    result = build_image(request)
    echo_fields(
        image=result.tag,
        dai_version=result.dai_version,
        python=result.python,
        python_from=("host" if result.python_from_host else "base"),
        size_mb=f"{result.size_bytes / 1e6:.0f}",
        seconds=f"{result.seconds:.1f}",
    )
    return 0


main = entry_point(cli)


if __name__ == "__main__":
    sys.exit(main())
