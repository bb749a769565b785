"""Build ``venvs/spark_inference`` for one logged model: its Python, its requirements, pyspark.

``make spark-venv MODEL_URI=URI`` runs it from ``venvs/launcher``: the model's
``python_env.yaml`` and ``requirements.txt`` (not the experiment wheel, which the model loads
from its artifacts) plus a pyspark, pyarrow and virtualenv for that Python, rebuilt only when any
of that changes. ``--site-path DIR`` puts a folder (the checkout) on the venv's ``sys.path``.
See spark_inference/README.md, "Running it", and docs/model-envs.md.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import click

from dai_mlflow.cli import HELP, entry_point
from dai_mlflow.envs.venvs import (
    PYTHON_ENV_FILE_NAME,
    REQUIREMENTS_FILE_NAME,
    VenvSpec,
    ensure_venv,
    load_python_env,
    pyspark_requirement,
    read_requirement_lines,
)
from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.log.requirements import canonical_name

# pyarrow for pandas UDFs (Arrow batches); the last release with Python 3.8 wheels is 17.
PYARROW_FOR_PYTHON = {"3.8": "pyarrow==17.0.0"}
PYARROW_DEFAULT = "pyarrow==25.0.1"
# virtualenv for plain spark_udf(env_manager="virtualenv") from this venv: MLflow 2.x creates
# model envs with the `virtualenv` command (3.x with `python -m venv`). Unpinned on purpose: the
# release must fit the model's pins (DAI 1.10 pins filelock 3.0.12, which only virtualenv 20.8
# accepts), so the resolver picks it.
VIRTUALENV_REQUIREMENT = "virtualenv"


class SparkEnvError(DaiMlflowError):
    """The model cannot be turned into a Spark scoring env (download failed, files missing)."""


def _requirement_name(line: str) -> str:
    match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    if not match or line.lstrip().startswith("-") or "/" in line or line.endswith(".whl"):
        return ""
    return canonical_name(match.group(1))


def _wheel_project(line: str) -> str:
    target = line.split(";")[0].strip()
    if not target.endswith(".whl"):
        return ""
    return canonical_name(Path(target).name.split("-")[0])


def model_requirements(lines: Sequence[str], scorer_module: Optional[str] = None) -> List[str]:
    """The model's requirement lines that go into the Spark venv: all but the experiment wheel.

    Models logged by this version of dai-mlflow do not list it; older ones do, and the wheel
    whose project is ``scorer_module`` is dropped here (the model loads it from its artifacts).
    """
    if not scorer_module:
        return list(lines)
    module = canonical_name(scorer_module)
    return [line for line in lines if _wheel_project(line) != module]


def scorer_module_of(model_dir: Path) -> Optional[str]:
    """The scorer module recorded in a dai-mlflow model's MLmodel (metadata), or None."""
    import yaml

    mlmodel = model_dir / "MLmodel"
    if not mlmodel.is_file():
        return None
    data = yaml.safe_load(mlmodel.read_text()) or {}
    module = (data.get("metadata") or {}).get("scorer_module")
    if not module:
        config = (data.get("flavors") or {}).get("python_function", {}).get("config") or {}
        module = config.get("scorer_module")
    return str(module) if module else None


def spark_requirements(python_version: str, lines: Sequence[str]) -> List[str]:
    """Requirements the driver needs on top of the model's: pyspark, pyarrow and virtualenv
    releases for Python X (each unless the model already names it)."""
    names = {_requirement_name(line) for line in lines}
    major_minor = ".".join(python_version.split(".")[:2])
    wanted = {
        "pyspark": pyspark_requirement(python_version),
        "pyarrow": PYARROW_FOR_PYTHON.get(major_minor, PYARROW_DEFAULT),
        "virtualenv": VIRTUALENV_REQUIREMENT,
    }
    return [line for name, line in wanted.items() if name not in names]


def spec_for_model_dir(
    model_dir: Path, installer: str = "uv", site_paths: Sequence[str] = ()
) -> VenvSpec:
    """The venv spec for a downloaded model folder."""
    return spec_for_files(
        model_dir / PYTHON_ENV_FILE_NAME,
        model_dir / REQUIREMENTS_FILE_NAME,
        installer,
        scorer_module_of(model_dir),
        site_paths,
    )


def spec_for_files(
    python_env: Path,
    requirements_file: Path,
    installer: str = "uv",
    scorer_module: Optional[str] = None,
    site_paths: Sequence[str] = (),
) -> VenvSpec:
    """The venv spec for a python_env.yaml + requirements.txt pair (relative paths resolve
    against the requirements file's folder, as they do against a model folder)."""
    env = load_python_env(python_env)
    python = str(env["python"])
    requirements = model_requirements(read_requirement_lines(requirements_file), scorer_module)
    return VenvSpec(
        python=python,
        build_dependencies=tuple(env.get("build_dependencies") or ()),
        dependencies=tuple(requirements) + tuple(spark_requirements(python, requirements)),
        base_dir=requirements_file.resolve().parent,
        installer=installer,
        site_paths=tuple(site_paths),
    )


def build_spark_env(
    model_uri: str,
    dest: Path,
    installer: str = "uv",
    quiet: bool = False,
    site_paths: Sequence[str] = (),
) -> Tuple[Path, bool]:
    """Download ``model_uri`` and make ``dest`` its Spark scoring venv.

    Returns:
        (python of the venv, True if built now / False if reused).

    Raises:
        SparkEnvError: the model could not be downloaded or lacks its env files.
        VenvBuildError, PythonNotFoundError: building failed (nothing is left at ``dest``).
    """
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="dai-mlflow-model-") as tmp:
        if Path(model_uri).is_dir():
            model_dir = Path(model_uri)
        else:
            try:
                model_dir = Path(
                    mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
                )
            except Exception as e:
                raise SparkEnvError(f"cannot download model {model_uri}: {e}") from e
        for name in (PYTHON_ENV_FILE_NAME, REQUIREMENTS_FILE_NAME):
            if not (model_dir / name).is_file():
                raise SparkEnvError(f"{model_uri} has no {name}; is it an MLflow pyfunc model?")
        spec = spec_for_model_dir(model_dir, installer, site_paths)
        return ensure_venv(spec, dest, quiet=quiet)


@click.command(
    name="python -m dai_mlflow.envs.spark_venv",
    context_settings=HELP,
    help="Build (or reuse) the Spark venv of a logged model: its env + pyspark.",
)
@click.option("--model-uri", help="models:/name@alias, runs:/.../model or a folder")
@click.option(
    "--python-env", type=click.Path(dir_okay=False, path_type=Path), help="with --requirements"
)
@click.option(
    "--requirements", type=click.Path(dir_okay=False, path_type=Path), help="beside --python-env"
)
@click.option("--dest", type=click.Path(path_type=Path), required=True, help="the venv folder")
@click.option("--site-path", multiple=True, help="a folder to add to the venv's sys.path")
@click.option("--installer", type=click.Choice(("uv", "pip")), default="uv", show_default=True)
@click.option("--quiet", is_flag=True, help="hide installer output")
def cli(
    model_uri: Optional[str],
    python_env: Optional[Path],
    requirements: Optional[Path],
    dest: Path,
    site_path: Sequence[str],
    installer: str,
    quiet: bool,
) -> None:
    """Build the venv; say where it is and how to score with it."""
    if bool(model_uri) == bool(python_env) or bool(python_env) != bool(requirements):
        raise click.UsageError("give --model-uri, or --python-env with --requirements")
    site_paths = [str(Path(p).resolve()) for p in site_path]
    if python_env and requirements:
        spec = spec_for_files(python_env, requirements, installer, site_paths=site_paths)
        _, built = ensure_venv(spec, dest, quiet=quiet)
    else:
        _, built = build_spark_env(str(model_uri), dest, installer, quiet, site_paths)
    click.echo(
        f"{'built' if built else 'reused'} {dest} -> score with: {dest}/bin/python "
        f"spark_inference/score.py --model-uri {model_uri or 'URI'} --input PATH --output PATH"
    )


main = entry_point(cli)


if __name__ == "__main__":
    sys.exit(main())
