"""Read and validate a DAI Python scoring pipeline (``scorer.zip`` or ``scoring-pipeline/``).

:func:`open_pipeline` returns a :class:`ScoringPipeline` (folder, experiment wheel and module, DAI
version, Python, requirement files); every problem is a one-line
:class:`~dai_mlflow.errors.PipelineError` naming the file and the fix. ``python -m
dai_mlflow.log.pipeline PATH`` prints what was found. Python 3.8-safe. See docs/logging.md.
Over 400 lines: one check per DAI layout rule, each with its own one-line error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Dict, List, Optional, Tuple

import click

from dai_mlflow.cli import HELP, echo_fields, entry_point
from dai_mlflow.envs.installers import has_credentials, redact_credentials
from dai_mlflow.errors import PipelineError, one_line

EXPERIMENT_WHEEL_PREFIX = "scoring_h2oai_experiment_"
CORE_WHEEL_PROJECT = "h2oaicore"
REQUIREMENTS_FILE_NAME = "requirements.txt"
# 1.10 ships req_constraints_deps.txt, 1.9 full_constraints.txt; the first present wins.
CONSTRAINTS_FILE_NAMES = ("req_constraints_deps.txt", "full_constraints.txt")
# Python lines of DAI releases: 1.10 LTS -> 3.8, 1.11 and 2.x -> 3.11.
_PYTHON_FOR_DAI = (((1, 10), "3.8"), ((1, 11), "3.11"), ((2, 0), "3.11"))
_CP_TAG = re.compile(r"^cp(\d)(\d+)$")


@dataclass(frozen=True)
class Wheel:
    """A wheel file of the pipeline and the fields of its file name (PEP 427)."""

    path: Path
    project: str
    version: str
    python_tag: str
    abi_tag: str
    platform_tag: str

    @property
    def file_name(self) -> str:
        return self.path.name

    @classmethod
    def from_path(cls, path: Path) -> Wheel:
        """Parse ``name-ver[-build]-py-abi-plat.whl``.

        Raises:
            PipelineError: the name is not a wheel file name.
        """
        parts = path.name[: -len(".whl")].split("-")
        if len(parts) not in (5, 6):
            raise PipelineError(
                f"{path}: not a valid wheel file name (name-version-python-abi-platform.whl); "
                "re-export the scoring pipeline from DAI"
            )
        return cls(path, parts[0], parts[1], parts[-3], parts[-2], parts[-1])

    def cpython_versions(self) -> List[str]:
        """``3.8`` for a ``cp38`` tag (several for ``cp38.cp39``); empty for ``py3``."""
        found = []
        for tag in self.python_tag.split("."):
            m = _CP_TAG.match(tag)
            if m:
                found.append(f"{m.group(1)}.{m.group(2)}")
        return found

    def metadata_headers(self) -> List[Tuple[str, str]]:
        """The header fields of the wheel's ``METADATA`` as (name, value) pairs."""
        try:
            with zipfile.ZipFile(self.path) as zf:
                names = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
                if not names:
                    return []
                text = zf.read(names[0]).decode("utf-8", "replace")
        except (OSError, zipfile.BadZipFile) as e:
            raise PipelineError(
                f"{self.path}: unreadable wheel ({e}); re-export the scoring pipeline from DAI"
            ) from e
        headers = []
        for line in text.splitlines():
            if not line.strip():
                break
            if ":" in line and not line.startswith((" ", "\t")):
                name, value = line.split(":", 1)
                headers.append((name.strip().lower(), value.strip()))
        return headers

    def requires_python(self) -> Optional[str]:
        """The ``Requires-Python`` of the wheel's METADATA, or None."""
        return next((v for k, v in self.metadata_headers() if k == "requires-python"), None)

    def required_version(self, project: str) -> Optional[str]:
        """The ``==`` version this wheel's ``Requires-Dist`` pins ``project`` to, or None."""
        for key, value in self.metadata_headers():
            m = re.match(rf"^{re.escape(project)}\s*\(?==\s*([\w.]+)", value)
            if key == "requires-dist" and m:
                return m.group(1)
        return None


@dataclass(frozen=True)
class ScoringPipeline:
    """A validated scoring-pipeline folder.

    Attributes:
        folder: the ``scoring-pipeline`` folder (extracted from the zip when one was given).
        source: what the user passed (zip or folder).
        experiment_wheel: the one ``scoring_h2oai_experiment_*`` wheel.
        module_name: the import name of the scorer module (``from <module> import Scorer``).
        wheels: every wheel in the folder, experiment wheel included, sorted by file name.
        dai_version: the DAI version (``1.10.7.3``), from the core wheel; None if not shipped.
        python: the Python ``major.minor`` the pipeline needs.
        requirements_file: the pipeline's ``requirements.txt``.
        constraints_file: its constraints file, or None.
    """

    folder: Path
    source: Path
    experiment_wheel: Wheel
    module_name: str
    wheels: Tuple[Wheel, ...]
    dai_version: Optional[str]
    python: str
    requirements_file: Path
    constraints_file: Optional[Path]

    @property
    def dai_line(self) -> str:
        """``1.10`` for the DAI 1.10 LTS line (Python 3.8), ``2`` for 1.11/2.x (Python 3.11)."""
        return "1.10" if self.python == "3.8" else "2"

    @property
    def experiment_key(self) -> str:
        return self.module_name[len(EXPERIMENT_WHEEL_PREFIX) :]


def open_pipeline(path: Path, extract_to: Optional[Path] = None) -> ScoringPipeline:
    """Read and validate a scoring pipeline given as ``scorer.zip`` or as a folder.

    Args:
        path: a scorer zip, a ``scoring-pipeline`` folder, or a folder holding exactly one
            ``scoring-pipeline`` folder.
        extract_to: where a zip is extracted (a fresh temp folder when None); unused for folders.

    Returns:
        The validated pipeline.

    Raises:
        PipelineError: the path is missing, the zip is corrupt or unsafe, or the folder lacks
            (or has two) experiment wheels or lacks ``requirements.txt``.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise PipelineError(
            f"{path} does not exist; pass a scorer.zip or a scoring-pipeline folder"
        )
    source = path.resolve()
    if path.is_file():
        dest = Path(extract_to) if extract_to else Path(tempfile.mkdtemp(prefix="dai-mlflow-zip-"))
        extract_zip(source, dest)
        folder = _find_pipeline_folder(dest, source)
    else:
        folder = _find_pipeline_folder(source, source)
    _refuse_symlinks(folder)
    return _read_folder(folder, source)


def extract_zip(zip_path: Path, dest: Path) -> None:
    """Extract ``zip_path`` into ``dest`` after checking every member is a plain, inner path.

    Raises:
        PipelineError: corrupt zip, or a member that is absolute, climbs out with ``..``, or is a
            symlink.
    """
    fix = "re-download scorer.zip from DAI (Deployments > Download Python Scoring Pipeline)"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for info in zf.infolist():
                _check_member(zip_path, info)
            dest.mkdir(parents=True, exist_ok=True)
            # One streamed pass: extraction checks every member's CRC as it reads it (a
            # corrupt member raises BadZipFile), so no separate testzip() read of the bytes.
            zf.extractall(dest)
    except zipfile.BadZipFile as e:
        raise PipelineError(f"{zip_path}: not a readable zip ({e}); {fix}") from e
    except (OSError, EOFError, ValueError) as e:
        raise PipelineError(f"{zip_path}: extraction failed ({e}); {fix}") from e


def _check_member(zip_path: Path, info: zipfile.ZipInfo) -> None:
    name = info.filename.replace("\\", "/")
    pure = PurePosixPath(name)
    unsafe = name.startswith("/") or re.match(r"^[A-Za-z]:", name) is not None or ".." in pure.parts
    if unsafe:
        raise PipelineError(
            f"{zip_path}: member {info.filename!r} would be written outside the extraction folder; "
            "refusing an unsafe zip — re-export the pipeline from DAI"
        )
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise PipelineError(
            f"{zip_path}: member {info.filename!r} is a symlink; refusing it — re-export the "
            "pipeline from DAI (DAI zips hold no symlinks)"
        )


def _refuse_symlinks(folder: Path) -> None:
    for p in folder.rglob("*"):
        if p.is_symlink():
            raise PipelineError(
                f"{p} is a symlink; copy the pipeline without symlinks (e.g. `cp -rL`) so the "
                "model holds real files"
            )


def _find_pipeline_folder(root: Path, source: Path) -> Path:
    """``root`` itself if it holds wheels, else its one ``scoring-pipeline*`` subfolder."""
    if any(root.glob("*.whl")) or (root / REQUIREMENTS_FILE_NAME).is_file():
        return root
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and any(d.glob("*.whl"))]
    if len(subdirs) == 1:
        return subdirs[0]
    if not subdirs:
        raise PipelineError(
            f"{source}: no {EXPERIMENT_WHEEL_PREFIX}*.whl found; pass the scorer.zip that DAI "
            "exports or its unzipped scoring-pipeline folder"
        )
    names = ", ".join(d.name for d in subdirs)
    raise PipelineError(
        f"{source}: several folders hold wheels ({names}); pass the scoring-pipeline folder itself"
    )


def _read_folder(folder: Path, source: Path) -> ScoringPipeline:
    wheels = tuple(Wheel.from_path(p) for p in sorted(folder.glob("*.whl")))
    experiment = [w for w in wheels if w.project.startswith(EXPERIMENT_WHEEL_PREFIX)]
    if not experiment:
        raise PipelineError(
            f"{folder}: no {EXPERIMENT_WHEEL_PREFIX}*.whl found; this is not a DAI Python scoring "
            "pipeline (download it from DAI: Deployments > Download Python Scoring Pipeline)"
        )
    if len(experiment) > 1:
        names = ", ".join(w.file_name for w in experiment)
        raise PipelineError(
            f"{folder}: two or more experiment wheels ({names}); keep exactly one experiment "
            "per scoring-pipeline folder"
        )
    requirements = folder / REQUIREMENTS_FILE_NAME
    if not requirements.is_file():
        raise PipelineError(
            f"{requirements} not found; the pipeline is incomplete — re-export the scoring "
            "pipeline from DAI (requirements.txt lists its dependencies)"
        )
    constraints = next((folder / n for n in CONSTRAINTS_FILE_NAMES if (folder / n).is_file()), None)
    dai_version, python = _dai_version_and_python(folder, wheels)
    return ScoringPipeline(
        folder=folder,
        source=source,
        experiment_wheel=experiment[0],
        module_name=experiment[0].project,
        wheels=wheels,
        dai_version=dai_version,
        python=python,
        requirements_file=requirements,
        constraints_file=constraints,
    )


def _version_tuple(version: str) -> Tuple[int, ...]:
    out = []
    for part in version.split("."):
        m = re.match(r"\d+", part)
        if not m:
            break
        out.append(int(m.group()))
    return tuple(out)


def _python_for_dai(dai_version: str) -> Optional[str]:
    found = None
    for since, python in _PYTHON_FOR_DAI:
        if _version_tuple(dai_version)[:2] >= since:
            found = python
    return found


def _python_from_requires(spec: str) -> Optional[str]:
    """``>=3.8,<3.9`` or ``==3.8.*`` -> ``3.8``; None when the range is open."""
    exact = re.search(r"==\s*(\d+\.\d+)", spec)
    if exact:
        return exact.group(1)
    low = re.search(r">=\s*(\d+)\.(\d+)", spec)
    high = re.search(r"<\s*(\d+)\.(\d+)", spec)
    if (
        low
        and high
        and (int(high.group(1)), int(high.group(2)))
        == (
            int(low.group(1)),
            int(low.group(2)) + 1,
        )
    ):
        return f"{low.group(1)}.{low.group(2)}"
    return None


def _dai_version_and_python(folder: Path, wheels: Tuple[Wheel, ...]) -> Tuple[Optional[str], str]:
    """DAI version from the core wheel; Python from the shared wheels' cp tags, then metadata."""
    core = [w for w in wheels if w.project == CORE_WHEEL_PROJECT]
    experiment = [w for w in wheels if w.project.startswith(EXPERIMENT_WHEEL_PREFIX)]
    # The core wheel names the DAI version; without it, the experiment wheel's pin on it does.
    dai_version = core[0].version if core else experiment[0].required_version(CORE_WHEEL_PROJECT)
    shared = [w for w in wheels if not w.project.startswith(EXPERIMENT_WHEEL_PREFIX)]
    tagged = sorted({v for w in shared for v in w.cpython_versions()})
    if len(tagged) > 1:
        raise PipelineError(
            f"{folder}: wheels built for several Pythons ({', '.join(tagged)}); the bundled wheels "
            "of one DAI export share one Python — re-export the pipeline"
        )
    python = tagged[0] if tagged else None
    if python is None:
        for w in core + shared + [w for w in wheels if w not in shared]:
            spec = w.requires_python()
            python = _python_from_requires(spec) if spec else None
            if python:
                break
    if python is None and dai_version:
        python = _python_for_dai(dai_version)
    if python is None:
        raise PipelineError(
            f"{folder}: cannot tell which Python the pipeline needs (no cpXY-tagged wheel, no "
            f"Requires-Python, no {CORE_WHEEL_PROJECT} wheel); re-export the pipeline from DAI"
        )
    if _version_tuple(python) < (3, 8):
        raise PipelineError(
            f"{folder}: the pipeline needs Python {python} (DAI before 1.10); MLflow models need "
            "Python >= 3.8 — re-train on DAI 1.10 LTS or later"
        )
    return dai_version, python


def copy_pipeline(pipeline: ScoringPipeline, dest: Path) -> Path:
    """Copy (hard-link where possible) the pipeline folder to ``dest`` (which must not exist),
    leaving out licenses.

    A license must never land in a model, so ``license.sig`` and ``*.lic`` files a user may have
    dropped into the folder are skipped. Credentials in URLs of its requirement files
    (``*.txt``, ``*.in``) are masked, as in the model's own requirements.
    """

    def _ignore(_dir: str, names: List[str]) -> List[str]:
        return [n for n in names if _is_license_file_name(n) or n == "__pycache__"]

    shutil.copytree(pipeline.folder, dest, ignore=_ignore, copy_function=_link_or_copy)
    for path in [*dest.rglob("*.txt"), *dest.rglob("*.in")]:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError):
            continue
        if has_credentials(text):
            path.unlink()  # it may be a hard link to the user's file: write a new one
            path.write_text(redact_credentials(text))
    return dest


def _link_or_copy(src: str, dst: str) -> str:
    """A hard link where the file system allows one, else a copy.

    The destination is a staging folder that is only read (MLflow copies it into the model), so
    a gigabyte pipeline is not copied twice.
    """
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def _is_license_file_name(name: str) -> bool:
    low = name.lower()
    return low.endswith((".sig", ".lic")) or low in ("license.key", "license.txt.sig")


COLUMN_STATS_FILE_NAME = "training_data_column_stats.json"
_STATS_TYPE_KEYS = ("data_type", "type", "logical_type", "dtype")
_STATS_SAMPLE_KEYS = ("data", "sample", "samples", "values")
_STATS_NAME_KEYS = ("name", "column_name", "col_name")


def read_column_stats(path: Path) -> Dict[str, Dict[str, Any]]:
    """DAI's ``training_data_column_stats.json`` as ``column -> stats``.

    Takes an object of columns or a list of column objects (named by ``name``, ``column_name``
    or ``col_name``), either one under ``"columns"`` or JSON-encoded as a string. Each entry
    keeps its keys, and gets ``data_type`` (the column's DAI type) and ``data`` (its sample
    values) from whichever of the names DAI versions use is there.

    Raises:
        PipelineError: not JSON, or not columns' stats.
    """
    try:
        data: Any = json.loads(path.read_text())
        if isinstance(data, str):
            data = json.loads(data)
    except (OSError, ValueError) as e:
        raise PipelineError(f"{path}: unreadable JSON ({one_line(e)}); re-export it") from e
    if isinstance(data, dict) and isinstance(data.get("columns"), list):
        data = data["columns"]
    if isinstance(data, dict):
        named = list(data.items())
    elif isinstance(data, list):
        named = [(_first(s, _STATS_NAME_KEYS, object), s) for s in data if isinstance(s, dict)]
    else:
        raise PipelineError(f"{path}: expected the columns' stats, got {type(data).__name__}")
    out: Dict[str, Dict[str, Any]] = {}
    for name, stats in named:
        if name is None or not isinstance(stats, dict):
            continue
        entry = dict(stats)
        kind = _first(stats, _STATS_TYPE_KEYS, str)
        if kind is not None:
            entry["data_type"] = kind
        entry["data"] = list(_first(stats, _STATS_SAMPLE_KEYS, list) or [])
        out[str(name)] = entry
    return out


def _first(stats: Dict[str, Any], keys: Tuple[str, ...], kind: type) -> Any:
    for key in keys:
        if stats.get(key) is not None and isinstance(stats[key], kind):
            return stats[key]
    return None


@click.command(
    name="python -m dai_mlflow.log.pipeline",
    context_settings=HELP,
    help="Print what a scoring pipeline (scorer.zip or folder) holds.",
)
@click.argument("path", type=click.Path(path_type=Path))
def cli(path: Path) -> None:
    """Open the pipeline and print its module, DAI version, Python and wheels."""
    with tempfile.TemporaryDirectory() as tmp:
        p = open_pipeline(path, Path(tmp))
        echo_fields(
            module=p.module_name,
            dai_version=p.dai_version,
            python=p.python,
            wheels=",".join(w.file_name for w in p.wheels),
        )


main = entry_point(cli)


if __name__ == "__main__":
    sys.exit(main())
