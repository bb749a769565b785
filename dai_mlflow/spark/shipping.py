"""What the driver sends executors through Spark itself: the model, this package, the license.

Once per ``SparkContext`` each: the model's thin part, zipped and named by a content key, and
for ``uv``/``virtualenv`` only its runtime wheels (:func:`split_model`); this package
(``addPyFile``); the driver's license as a private copy under a random name, never in a conf, a
log line or the closure, and on a non-local master only when Spark authenticates and encrypts
(:class:`LicenseShippingError`). Driver side; Python 3.8-safe. See spark_inference/README.md,
"How it works" and "The license on a cluster".
Over 400 lines: what crosses to executors (model, package, license) is decided in one place.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from dai_mlflow.envs.venvs import PYTHON_ENV_FILE_NAME, REQUIREMENTS_FILE_NAME
from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.model.experiment import file_sha256
from dai_mlflow.model.license import (
    LICENSE_FILE_ENV,
    LICENSE_KEY_ENV,
    LicenseNotFoundError,
    find_license,
)

if TYPE_CHECKING:
    from pyspark.sql import SparkSession


SHIP_PACKAGE_ENV = "DAI_MLFLOW_SHIP_PACKAGE"
SHIP_LICENSE_ENV = "DAI_MLFLOW_SHIP_LICENSE"
_LOCAL_MASTER = re.compile(r"^local(\[[^\]]*\])?$")
_PACKAGE_DIR = Path(__file__).resolve().parents[1]
_scratch: Optional[Path] = None
# Spark application id -> what was shipped to it (what -> SparkFiles name)
_shipped: Dict[str, Dict[str, str]] = {}


def _scratch_dir() -> Path:
    global _scratch
    if _scratch is None or not _scratch.is_dir():
        _scratch = Path(tempfile.mkdtemp(prefix="dai-mlflow-ship-"))
        os.chmod(str(_scratch), 0o700)
        atexit.register(shutil.rmtree, str(_scratch), True)
    return _scratch


def _off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in ("0", "false", "no", "off")


def model_key(model_dir: Path) -> str:
    """A content key of a model folder: ``MLmodel``'s bytes and every file's path and size.

    ``MLmodel`` holds the model's uuid, so two logged models never share a key; a file changed
    in place without changing its size is the one case it misses (logged models are never
    edited).
    """
    digest = hashlib.sha256((model_dir / "MLmodel").read_bytes())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\n".encode())
    return digest.hexdigest()[:20]


def _zip_folder(folder: Path, dest: Path, prefix: str = "") -> Path:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return _zip_files(folder, [p.relative_to(folder).as_posix() for p in files], dest, prefix)


def _zip_files(folder: Path, names: Sequence[str], dest: Path, prefix: str = "") -> Path:
    tmp = dest.with_name(dest.name + ".part")
    with zipfile.ZipFile(str(tmp), "w", zipfile.ZIP_STORED) as zf:
        for name in names:
            zf.write(str(folder / name), prefix + name)
    tmp.replace(dest)
    return dest


# ------------------------------------------------------------------------------ thin / runtime
_ARCHIVES = (".whl", ".tar.gz", ".zip")
_NESTED = ("-r", "--requirement", "-c", "--constraint")


@dataclass(frozen=True)
class ModelParts:
    """How a model folder is shipped: paths relative to it (posix).

    Attributes:
        thin: what every executor gets (all but ``runtime``).
        runtime: the shared wheels, needed only to build the model's env.
        runtime_key: content key of ``runtime`` ("" when there is none).
        env_id: ``runtime_key`` plus the bytes of every other input of the env's spec
            (``python_env.yaml``, ``requirements.txt``, the files they name): executors remember
            the env they built under it ("" when there is no runtime).
    """

    thin: Tuple[str, ...]
    runtime: Tuple[str, ...] = ()
    runtime_key: str = ""
    env_id: str = ""


def _named_files(lines: Sequence[str], base: Path, root: Path) -> List[Tuple[str, bool]]:
    """Local files inside ``root`` that requirement lines name: (path, named by -r/-c)."""
    found: List[Tuple[str, bool]] = []
    for raw in lines:
        line = raw.split(" #")[0].strip()
        if not line or line.startswith("#"):
            continue
        nested = next(
            (line[len(f) + 1 :].strip() for f in _NESTED if line.startswith((f + " ", f + "="))),
            None,
        )
        target = (nested or line).split(";")[0].strip()
        if nested is None and not (target.startswith((".", "/")) or target.endswith(_ARCHIVES)):
            continue  # a pin or a URL, nothing in the folder
        path = (base / target).resolve()
        try:
            rel = path.relative_to(root).as_posix()
        except ValueError:
            continue
        if path.is_file():
            found.append((rel, nested is not None))
            if nested is not None:
                found.extend(_named_files(path.read_text().splitlines(), path.parent, root))
    return found


def _experiment_project(model_dir: Path) -> str:
    """Canonical project name of the model's experiment wheel (its scorer module), or ""."""
    import yaml

    try:
        data = yaml.safe_load((model_dir / "MLmodel").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return ""
    meta = data.get("metadata") or {}
    module = meta.get("scorer_module")
    if not module:
        config = (data.get("flavors") or {}).get("python_function", {}).get("config") or {}
        module = config.get("scorer_module")
    return _canonical(str(module)) if module else ""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _fingerprint(path: Path) -> str:
    """A wheel's zip index (every member's name, size and CRC-32: its contents, read from the
    end of the file only); the sha256 of the bytes for anything that is not a zip."""
    try:
        with zipfile.ZipFile(str(path)) as zf:
            index = [(i.filename, i.file_size, i.CRC) for i in zf.infolist()]
        return hashlib.sha256(repr(index).encode()).hexdigest()
    except zipfile.BadZipFile:
        return file_sha256(path)


def split_model(model_dir: Path) -> ModelParts:
    """Split a model folder into its thin part and its runtime (see the module docstring).

    The runtime is what the model's env installs from the model folder: the archives its
    ``requirements.txt`` names (directly or through ``-r``/``-c`` files), except the experiment
    wheel (the model loads it itself) and anything under ``code/`` (MLflow puts that folder on
    ``sys.path``; it travels whole).
    """
    model_dir = model_dir.resolve()
    files = sorted(
        p.relative_to(model_dir).as_posix()
        for p in model_dir.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    )
    requirements = model_dir / REQUIREMENTS_FILE_NAME
    if not requirements.is_file():
        return ModelParts(thin=tuple(files))
    named = _named_files(requirements.read_text().splitlines(), model_dir, model_dir)
    experiment = _experiment_project(model_dir)
    runtime = sorted(
        {
            rel
            for rel, nested in named
            if not nested
            and rel.endswith(_ARCHIVES)
            and not rel.startswith("code/")
            and _canonical(rel.rsplit("/", 1)[-1].split("-")[0]) != experiment
        }
    )
    if not runtime:
        return ModelParts(thin=tuple(files))
    digest = hashlib.sha256()
    for rel in runtime:
        path = model_dir / rel
        digest.update(f"{rel}\0{path.stat().st_size}\0{_fingerprint(path)}\n".encode())
    runtime_key = digest.hexdigest()[:20]
    spec = hashlib.sha256(runtime_key.encode())
    inputs = {PYTHON_ENV_FILE_NAME, REQUIREMENTS_FILE_NAME} | {rel for rel, _ in named}
    for rel in sorted(inputs - set(runtime)):
        if (model_dir / rel).is_file():
            spec.update(f"{rel}\0{file_sha256(model_dir / rel)}\n".encode())
    return ModelParts(
        thin=tuple(f for f in files if f not in set(runtime)),
        runtime=tuple(runtime),
        runtime_key=runtime_key,
        env_id=spec.hexdigest()[:20],
    )


def _once(spark: SparkSession, name: str, ship: Callable[[], str]) -> str:
    shipped = _shipped.setdefault(spark.sparkContext.applicationId, {})
    if name not in shipped:
        shipped[name] = ship()
    return shipped[name]


@dataclass(frozen=True)
class ShippedModel:
    """What :func:`ship_model` sent, as executors find it.

    Attributes:
        model_file: ``SparkFiles`` name of the thin part (a zip).
        model_key: content key of the model (the folder executors extract it to).
        runtime: (``SparkFiles`` name, path in the model folder) of each runtime wheel; empty
            when none was needed or the model has none.
        runtime_key: see :class:`ModelParts`.
        env_id: see :class:`ModelParts`.
    """

    model_file: str
    model_key: str
    runtime: Tuple[Tuple[str, str], ...] = ()
    runtime_key: str = ""
    env_id: str = ""


def _link_or_copy(source: Path, dest: Path) -> None:
    """``dest`` as a hard link to ``source`` (no bytes copied), else a copy."""
    if dest.is_file() and dest.stat().st_size == source.stat().st_size:
        return
    tmp = dest.with_name(dest.name + ".part")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(str(source), str(tmp))
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(str(source), str(tmp))
    tmp.replace(dest)


def ship_model(spark: SparkSession, model_dir: Path, runtime: bool = True) -> ShippedModel:
    """Send a model to the executors: its thin part, and its runtime unless already sent.

    Args:
        spark: the session.
        model_dir: the downloaded model folder.
        runtime: whether executors may have to build the model's env (``uv``/``virtualenv``);
            False sends the thin part only.
    """
    key = model_key(model_dir)
    parts = split_model(model_dir)

    def _ship_thin() -> str:
        archive = _zip_files(model_dir, parts.thin, _scratch_dir() / f"dai-mlflow-model-{key}.zip")
        spark.sparkContext.addFile(str(archive))
        return archive.name

    model_file = _once(spark, f"model:{key}", _ship_thin)
    if not runtime or not parts.runtime:
        return ShippedModel(model_file, key)
    shipped = []
    for i, rel in enumerate(parts.runtime):
        name = f"dai-mlflow-runtime-{parts.runtime_key}-{i}-{rel.rsplit('/', 1)[-1]}"

        def _ship(rel: str = rel, name: str = name) -> str:
            dest = _scratch_dir() / name
            _link_or_copy(model_dir / rel, dest)  # kept by key: a later application re-sends it
            spark.sparkContext.addFile(str(dest))
            return name

        shipped.append((_once(spark, f"runtime:{name}", _ship), rel))
    return ShippedModel(model_file, key, tuple(shipped), parts.runtime_key, parts.env_id)


def ship_package(spark: SparkSession) -> Optional[str]:
    """Send this package to the Python workers (unless ``DAI_MLFLOW_SHIP_PACKAGE=0``)."""
    if _off(SHIP_PACKAGE_ENV):
        return None

    def _ship() -> str:
        digest = hashlib.sha256()
        for path in sorted(p for p in _PACKAGE_DIR.rglob("*") if p.is_file()):
            if "__pycache__" not in path.parts:
                digest.update(path.relative_to(_PACKAGE_DIR).as_posix().encode())
                digest.update(path.read_bytes())
        archive = _scratch_dir() / f"dai_mlflow-{digest.hexdigest()[:16]}.zip"
        _zip_folder(_PACKAGE_DIR, archive, prefix="dai_mlflow/")
        spark.sparkContext.addPyFile(str(archive))
        return archive.name

    return _once(spark, "package", _ship)


class LicenseShippingError(DaiMlflowError):
    """The license would leave the driver over a Spark that does not authenticate and encrypt."""


def _conf_on(conf: Any, key: str) -> bool:
    return str(conf.get(key, "false")).strip().lower() == "true"


def is_local_master(master: str) -> bool:
    """``local`` and ``local[...]``: the executors are this process, nothing crosses a network."""
    return bool(_LOCAL_MASTER.match(master.strip()))


def check_secure_transport(master: str, conf: Any) -> None:
    """Refuse a non-local master whose connections are not authenticated and encrypted.

    Args:
        master: the Spark master.
        conf: the Spark conf (a ``SparkConf`` or a mapping of the same keys).

    Raises:
        LicenseShippingError: one line naming the confs to turn on, or the way around it.
    """
    if is_local_master(master):
        return
    needed = []
    if not _conf_on(conf, "spark.authenticate"):
        needed.append("spark.authenticate=true")
    if master.startswith("spark://") and not conf.get("spark.authenticate.secret", ""):
        needed.append("spark.authenticate.secret=<secret shared with the cluster>")
    if not _conf_on(conf, "spark.network.crypto.enabled"):
        needed.append("spark.network.crypto.enabled=true")
    if needed:
        raise LicenseShippingError(
            f"not sending the DAI license to the executors of {master}: Spark would serve it "
            f"unauthenticated or unencrypted; set {' '.join(needed)} (--conf KEY=VALUE or "
            f"spark-defaults.conf), or provide the license on the nodes and set "
            f"{SHIP_LICENSE_ENV}=0"
        )


def license_to_ship(env: Optional[Mapping[str, str]] = None) -> Optional[Tuple[str, bytes]]:
    """The license a job would ship: (``key``|``file``, its bytes), or None.

    Args:
        env: variables given for the model (``score(env=...)``); they win over the driver's.

    Raises:
        LicenseShippingError: ``DAI_MLFLOW_SHIP_LICENSE=0`` while ``env`` gives a key, which
            would then travel in the job's closure.
    """
    given = {k: v for k, v in (env or {}).items() if k in (LICENSE_KEY_ENV, LICENSE_FILE_ENV)}
    if _off(SHIP_LICENSE_ENV):
        if given.get(LICENSE_KEY_ENV, "").strip():
            raise LicenseShippingError(
                f"{SHIP_LICENSE_ENV}=0 sends no license, but env= gives {LICENSE_KEY_ENV}; "
                "leave it out (the nodes provide their own) or unset " + SHIP_LICENSE_ENV
            )
        return None
    environ = {**os.environ, **given} if given else None
    try:
        source = find_license(environ)
    except LicenseNotFoundError:
        return None
    if source.kind == "key":
        return "key", (environ or os.environ)[LICENSE_KEY_ENV].strip().encode()
    return "file", Path(source.where).read_bytes()


def ship_license(
    spark: SparkSession, env: Optional[Mapping[str, str]] = None
) -> Optional[Tuple[str, str]]:
    """Send the license the driver sees to the executors; (``key``|``file``, SparkFiles name).

    Args:
        spark: the session.
        env: variables given for the model (``score(env=...)``); they win over the driver's.

    Returns:
        None when the driver has no license or ``DAI_MLFLOW_SHIP_LICENSE=0`` (executors then use
        their own).

    Raises:
        LicenseShippingError: a non-local master without authentication and encryption.
    """
    found = license_to_ship(env)
    if found is None:
        return None
    kind, data = found
    digest = hashlib.sha256(data).hexdigest()
    check_secure_transport(str(spark.sparkContext.master), spark.sparkContext.getConf())

    def _ship() -> str:
        path = _scratch_dir() / f"dai-mlflow-license-{uuid.uuid4().hex}"
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        spark.sparkContext.addFile(str(path))
        return path.name

    return kind, _once(spark, f"license:{kind}:{digest}", _ship)
