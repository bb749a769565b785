"""Build a DAI-shaped stand-in scoring pipeline: ``OUT/scorer.zip`` and what goes beside it.

:func:`build_pipeline` trains the model, writes the wheels, requirement files and example.py,
zips them under ``scoring-pipeline/``, and writes the extracted folder, ``license.sig``, sample
and holdout CSVs and ``standin.json`` (read by :func:`load_build`). Same arguments, same bytes.
``runtime_mb``/``runtime_files`` make the runtime wheel as heavy as a real one; it depends only
on the DAI version and those sizes, so experiments of one version share it, as real ones do.
Over 400 lines: one builder for every file of a DAI-shaped pipeline (tests and demo only).
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
import shutil
import uuid
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple, TypedDict

import pandas as pd

from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.log import wheelfile
from dai_mlflow.log.wheelfile import Content, build_wheel, write_zip
from dai_mlflow.standin import data as data_mod
from dai_mlflow.standin import texts
from dai_mlflow.standin.lines import DAI_LINES, H2O4GPU_REQUIRES, PROBLEMS, DaiLine
from dai_mlflow.standin.runtime.h2oaicore import engine
from dai_mlflow.standin.runtime.h2oaicore.licensing import sign_license
from dai_mlflow.standin.train import to_frame, train

SCORER_ZIP_NAME = "scorer.zip"
SCORING_PIPELINE_DIR_NAME = "scoring-pipeline"
LICENSE_FILE_NAME = "license.sig"
SAMPLE_INPUT_NAME = "sample_input.csv"
HOLDOUT_NAME = "holdout.csv"
MANIFEST_NAME = "standin.json"
N_TRAIN = 2000
N_HOLDOUT = 500
N_SAMPLE = 300
_KEY_NAMESPACE = uuid.UUID("6f1d2a52-3c1b-5e0a-9d7e-2a1f3b4c5d6e")
_RUNTIME_DIR = Path(__file__).resolve().parent / "runtime" / "h2oaicore"
_RUNTIME_FILES = ("__init__.py", "engine.py", "licensing.py", "scorer.py")
# Heavy runtimes: blobs of at most this size (shared libraries), made in chunks of _CHUNK.
_BLOB_BYTES = 64 << 20
_CHUNK = 1 << 20


class _WheelMeta(TypedDict):
    """:func:`~dai_mlflow.log.wheelfile.build_wheel` arguments every stand-in wheel shares."""

    license_text: str
    generator: str
    platform: str


_STANDIN_WHEEL: _WheelMeta = {
    "license_text": "Proprietary stand-in (dai-mlflow test fixture; not H2O.ai software)",
    "generator": "dai-mlflow-standin (zipfile)",
    "platform": "Linux",
}


class StandinError(DaiMlflowError):
    """The stand-in builder was called with arguments it cannot build."""


@dataclass(frozen=True)
class StandinBuild:
    """A finished stand-in build and where its parts are.

    Attributes:
        out_dir: the output folder.
        zip_path: ``OUT/scorer.zip``.
        folder: the extracted ``OUT/scoring-pipeline`` folder.
        license_path: ``OUT/license.sig`` (a valid license; never inside the zip).
        experiment_key: the experiment uuid (with dashes).
        module_name: ``scoring_h2oai_experiment_<key with underscores>``.
        target: the target column.
        labels: class labels (classification) or None.
        problem: regression, binary or multiclass.
        dai_line: ``1.10`` or ``2``; dai_version is the full version, e.g. ``1.10.7.3``.
        python: the Python ``major.minor`` of the line.
        sample_input_csv: input columns only, with missing values.
        holdout_csv: input columns plus the target.
        experiment_wheel / core_wheel / h2o4gpu_wheel: wheel file names inside ``folder``.
        input_columns: input column names in ``get_column_names()`` order.
        seed: the seed the build was made with.
        runtime_mb / runtime_files: the runtime wheel's extra blobs (MiB) and modules.
    """

    out_dir: Path
    zip_path: Path
    folder: Path
    license_path: Path
    experiment_key: str
    module_name: str
    target: str
    labels: Optional[Tuple[str, ...]]
    problem: str
    dai_line: str
    dai_version: str
    python: str
    sample_input_csv: Path
    holdout_csv: Path
    experiment_wheel: str
    core_wheel: str
    h2o4gpu_wheel: str
    input_columns: Tuple[str, ...]
    seed: int = 0
    runtime_mb: int = 0
    runtime_files: int = 0

    def license_env(self) -> Dict[str, str]:
        """Env vars that point the scorer at this build's license."""
        return {"DRIVERLESS_AI_LICENSE_FILE": str(self.license_path)}

    def installable_requirements(self) -> List[str]:
        """requirements.txt lines minus the ones a packager must drop (h2o4gpu, pyorc)."""
        lines = (self.folder / "requirements.txt").read_text().splitlines()
        keep = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        return [ln for ln in keep if not ln.startswith(("h2o4gpu", "pyorc"))]


def _read_sources() -> Tuple[str, Dict[str, bytes]]:
    """(hash of every source of this package, bytes of the runtime wheel's files), read once.

    Read when the module is imported, not when a build runs: a long-lived process that loaded
    older code must label its builds with the hash of the code it runs, or another process
    would take them for current.
    """
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    digest.update(b"wheelfile.py\0" + Path(wheelfile.__file__).read_bytes())  # writes the wheels
    runtime = {f"h2oaicore/{n}": (_RUNTIME_DIR / n).read_bytes() for n in _RUNTIME_FILES}
    return digest.hexdigest()[:16], runtime


_FINGERPRINT, _RUNTIME_SOURCES = _read_sources()


def builder_fingerprint() -> str:
    """Hash of the builder's sources as loaded: a cached build made by other code is stale."""
    return _FINGERPRINT


def experiment_key(dai_line: str, problem: str, seed: int) -> str:
    """Deterministic experiment uuid for (line, problem, seed)."""
    return str(uuid.uuid5(_KEY_NAMESPACE, f"{dai_line}/{problem}/{seed}"))


def module_name_for(key: str) -> str:
    """Import name of the experiment module for an experiment key."""
    return "scoring_h2oai_experiment_" + key.replace("-", "_")


def _validate(dai_version: str, problem: str, runtime_mb: int, runtime_files: int) -> DaiLine:
    if runtime_mb < 0 or runtime_files < 0:
        raise StandinError("runtime_mb and runtime_files must be 0 or more")
    if dai_version not in DAI_LINES:
        raise StandinError(
            f"unknown DAI line {dai_version!r}; use one of {', '.join(sorted(DAI_LINES))}"
        )
    if problem not in PROBLEMS:
        raise StandinError(f"unknown problem {problem!r}; use one of {', '.join(PROBLEMS)}")
    return DAI_LINES[dai_version]


def _data_seed(dai_line: str, problem: str, seed: int) -> int:
    digest = hashlib.sha256(f"standin-data/{dai_line}/{problem}/{seed}".encode()).hexdigest()
    return int(digest[:12], 16)


def _runtime_files(
    line: DaiLine, runtime_mb: int = 0, runtime_files: int = 0
) -> Dict[str, Content]:
    files: Dict[str, Content] = dict(_RUNTIME_SOURCES)
    init = _RUNTIME_SOURCES["h2oaicore/__init__.py"].decode()
    files["h2oaicore/__init__.py"] = init.replace(
        '__version__ = "0+standin"', f'__version__ = "{line.dai_version}+standin"'
    ).encode()
    for i in range(runtime_files):
        files[f"h2oaicore/generated/m{i:05d}.py"] = _bulk_module(line, i)
    total = runtime_mb << 20
    for i in range(-(-total // _BLOB_BYTES)):
        size = min(_BLOB_BYTES, total - i * _BLOB_BYTES)
        name = f"h2oaicore/lib/libh2oai_standin_{i:03d}.so"
        files[name] = functools.partial(_blob_chunks, f"{line.dai_version}/{i}", size)
    return files


def _bulk_module(line: DaiLine, i: int) -> bytes:
    """A small module of the heavy runtime; it is installed, never imported."""
    head = f'"""Generated runtime module {i} of DAI {line.dai_version} ({texts.NOTICE})."""\n'
    body = [
        f"\n\ndef transform_{j}(x, scale={(i * 31 + j) % 97 + 1}):\n"
        f"    return (x * scale + {j}) % {i + 101}\n"
        for j in range(24)
    ]
    return (head + "".join(body)).encode()


def _blob_chunks(seed: str, size: int) -> Iterator[bytes]:
    """``size`` incompressible bytes that depend on ``seed`` only (like a native library)."""
    rng = random.Random(seed)  # a str seed is hashed the same way on every Python 3
    while size > 0:
        n = min(_CHUNK, size)
        yield rng.getrandbits(8 * n).to_bytes(n, "little")
        size -= n


def _requirements_txt(line: DaiLine, experiment_wheel: str) -> str:
    lines = [
        f"# Requirements of a DAI {line.dai_version} scoring pipeline ({texts.NOTICE})",
        f"# Install into a Python {line.python} env with: pip install -r requirements.txt "
        "-c req_constraints_deps.txt",
        line.core_wheel,
        line.h2o4gpu_wheel,
        *line.requirements[:2],
        line.pyorc_pin,
        *line.requirements[2:],
        "# bundled model wheel",
        experiment_wheel,
        # Exported files repeat pins; a packager has to tolerate (or drop) duplicates.
        line.requirements[0],
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class _Trained:
    """The data and the fitted model of one build."""

    train: data_mod.Dataset
    holdout: data_mod.Dataset
    model: Dict[str, Any]
    metrics: Dict[str, float]
    stats: Dict[str, Dict[str, Any]]


def _train(line: DaiLine, problem: str, seed: int, key: str) -> _Trained:
    data = data_mod.generate(problem, N_TRAIN + N_HOLDOUT, _data_seed(line.name, problem, seed))

    def _part(rows: slice) -> data_mod.Dataset:
        return data_mod.Dataset(
            data.columns, data.data_types, data.rows[rows], data.target, data.labels[rows]
        )

    train_set, holdout = _part(slice(0, N_TRAIN)), _part(slice(N_TRAIN, None))
    model = train(train_set, problem, key)
    metrics = engine.metrics(engine.Model(model), to_frame(holdout), pd.Series(holdout.labels))
    return _Trained(train_set, holdout, model, metrics, data_mod.column_stats(train_set))


def _wheels(
    wheel_dir: Path,
    line: DaiLine,
    key: str,
    module: str,
    model: Dict[str, Any],
    size: Tuple[int, int],
):
    """Write the runtime, h2o4gpu and experiment wheels; return their paths."""
    platform_tag = f"{line.cp_tag}-{line.cp_tag}-linux_x86_64"
    core = build_wheel(
        wheel_dir, "h2oaicore", line.dai_version, platform_tag, _runtime_files(line, *size),
        summary=f"Stand-in DAI core runtime for DAI {line.dai_version} ({texts.NOTICE})",
        requires_dist=(line.pin("numpy"), line.pin("pandas")),
        requires_python=f"=={line.python}.*", root_is_purelib=False, **_STANDIN_WHEEL,
    )  # fmt: skip
    gpu = build_wheel(
        wheel_dir, "h2o4gpu", line.h2o4gpu_version, platform_tag,
        {"h2o4gpu/__init__.py": f'"""{texts.NOTICE} Not meant to be installed."""\n'.encode()},
        summary=f"Stand-in for the GPU library DAI bundles ({texts.NOTICE})",
        requires_dist=H2O4GPU_REQUIRES, root_is_purelib=False, **_STANDIN_WHEEL,
    )  # fmt: skip
    files = {n: src.encode() for n, src in texts.experiment_module(key, module).items()}
    files[f"{module}/fitted_model.json"] = (json.dumps(model, indent=1) + "\n").encode()
    exp = build_wheel(
        wheel_dir, module, "1.0.0", "py3-none-any", files,
        summary=f"Scoring module of experiment {key} ({texts.NOTICE})",
        requires_dist=(f"h2oaicore=={line.dai_version}",), **_STANDIN_WHEEL,
    )  # fmt: skip
    return core, gpu, exp


def _pipeline_files(
    staging: Path, line: DaiLine, key: str, module: str, trained: _Trained, size: Tuple[int, int]
) -> Tuple[Dict[str, Content], Tuple[str, str, str]]:
    """Every file of ``scoring-pipeline/`` (name -> content) and the three wheel names."""
    core, gpu, exp = _wheels(staging / "wheels", line, key, module, trained.model, size)
    data = trained.train
    summary = {
        "experiment_key": key,
        "dai_version": line.dai_version,
        "target": data.target,
        "problem_type": trained.model["problem"],
        "labels": trained.model["labels"],
        "scoring_module": module,
        "columns": list(data.columns),
        "transformed_features": [f["name"] for f in trained.model["features"]],
        "train_rows": len(data.rows),
        "holdout_metrics": {k: round(v, 6) for k, v in trained.metrics.items()},
        "notice": texts.NOTICE,
    }
    summary_zip = write_zip(
        staging / f"h2oai_experiment_summary_{key}.zip",
        {"summary.json": texts.summary_json(summary)},
    )
    files: Dict[str, Content] = {p.name: p for p in (core, gpu, exp, summary_zip)}
    files["requirements.txt"] = _requirements_txt(line, exp.name).encode()
    files["req_constraints_deps.txt"] = ("\n".join(line.constraints) + "\n").encode()
    files["training_data_column_stats.json"] = (json.dumps(trained.stats, indent=2) + "\n").encode()
    example = texts.example_py(module, data.columns, trained.stats, trained.holdout.rows[:15])
    files["example.py"] = example.encode()
    files["run_example.sh"] = texts.run_example_sh(line).encode()
    names = [*files, "README.txt"]
    files["README.txt"] = texts.readme_txt(line, key, module, data.target, names).encode()
    return files, (core.name, gpu.name, exp.name)


def build_pipeline(
    out_dir: Path,
    dai_version: str,
    problem: str,
    seed: int = 0,
    runtime_mb: int = 0,
    runtime_files: int = 0,
) -> StandinBuild:
    """Build a stand-in pipeline into ``out_dir`` (created; files of a previous build replaced).

    Args:
        out_dir: output folder.
        dai_version: DAI line, ``1.10`` (Python 3.8) or ``2`` (Python 3.11).
        problem: ``regression``, ``binary`` or ``multiclass``.
        seed: varies the data, the model and the experiment key.
        runtime_mb: MiB of incompressible blobs added to the runtime wheel (0: a light one).
        runtime_files: small modules added to the runtime wheel.

    Returns:
        The finished build.

    Raises:
        StandinError: unknown line or problem.
    """
    line = _validate(dai_version, problem, runtime_mb, runtime_files)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    key = experiment_key(line.name, problem, seed)
    module = module_name_for(key)
    trained = _train(line, problem, seed, key)

    staging = out_dir / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        files, (core, gpu, exp) = _pipeline_files(
            staging, line, key, module, trained, (runtime_mb, runtime_files)
        )
        prefix = SCORING_PIPELINE_DIR_NAME + "/"
        zip_tmp = write_zip(
            staging / SCORER_ZIP_NAME,
            {prefix + name: data for name, data in files.items()},
            folders=[prefix],
        )
        folder = out_dir / SCORING_PIPELINE_DIR_NAME
        shutil.rmtree(folder, ignore_errors=True)
        with zipfile.ZipFile(zip_tmp) as zf:
            zf.extractall(out_dir)
        zip_tmp.replace(out_dir / SCORER_ZIP_NAME)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    license_path = out_dir / LICENSE_FILE_NAME
    license_path.write_text(
        sign_license(
            {
                "license_version": "1",
                "serial_number": f"standin-{seed}",
                "licensee_organization": "dai-mlflow tests and demo",
                "expiration_date": "2099/12/31",
            }
        )
    )
    license_path.chmod(0o600)
    holdout = trained.holdout
    data_mod.write_csv(out_dir / SAMPLE_INPUT_NAME, holdout.columns, holdout.rows[:N_SAMPLE])
    data_mod.write_csv(
        out_dir / HOLDOUT_NAME,
        [*holdout.columns, holdout.target],
        [[*row, label] for row, label in zip(holdout.rows, holdout.labels)],
    )
    labels = trained.model["labels"]
    build = StandinBuild(
        out_dir=out_dir,
        zip_path=out_dir / SCORER_ZIP_NAME,
        folder=folder,
        license_path=license_path,
        experiment_key=key,
        module_name=module,
        target=holdout.target,
        labels=None if labels is None else tuple(labels),
        problem=problem,
        dai_line=line.name,
        dai_version=line.dai_version,
        python=line.python,
        sample_input_csv=out_dir / SAMPLE_INPUT_NAME,
        holdout_csv=out_dir / HOLDOUT_NAME,
        experiment_wheel=exp,
        core_wheel=core,
        h2o4gpu_wheel=gpu,
        input_columns=tuple(holdout.columns),
        seed=seed,
        runtime_mb=runtime_mb,
        runtime_files=runtime_files,
    )
    # Paths relative to out_dir, so a finished build can be moved (the test cache swaps folders).
    manifest = {
        k: (v.relative_to(out_dir).as_posix() if isinstance(v, Path) else v)
        for k, v in asdict(build).items()
        if k != "out_dir"
    }
    manifest["builder"] = builder_fingerprint()
    (out_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return build


def load_build(out_dir: Path, current_only: bool = True) -> Optional[StandinBuild]:
    """The build recorded in ``out_dir``'s manifest, or None when there is no finished build.

    With ``current_only``, a build made by a different version of this builder counts as none.
    """
    out_dir = Path(out_dir).resolve()
    try:
        data = json.loads((out_dir / MANIFEST_NAME).read_text())
        builder = data.pop("builder", None)
        if current_only and builder != builder_fingerprint():
            return None
        fields: Dict[str, Any] = {"out_dir": out_dir}  # a manifest's JSON values
        for name, value in data.items():
            if name == "out_dir":
                continue  # older manifests held absolute paths; the folder read is the truth
            if name in ("labels", "input_columns"):
                fields[name] = None if value is None else tuple(value)
            elif name in ("zip_path", "folder", "license_path") or name.endswith("_csv"):
                fields[name] = out_dir / value
            else:
                fields[name] = value
        build = StandinBuild(**fields)
    except (OSError, ValueError, TypeError):
        return None
    if not (build.zip_path.is_file() and build.folder.is_dir() and build.license_path.is_file()):
        return None
    return build
