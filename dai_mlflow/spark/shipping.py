"""What the driver sends executors through Spark itself: the model, this package, the license.

Executors are other machines: they see nothing of the driver's files or variables unless Spark
ships them. Per ``SparkContext``, each thing is shipped once:

* the model folder, zipped (stored, not deflated: fast), with ``SparkContext.addFile``; its
  name carries a content key (``MLmodel``'s bytes and every file's path and size), which is also
  the folder executors extract it to, once;
* this package, zipped, with ``SparkContext.addPyFile``, so that Python workers import the same
  dai_mlflow as the driver whether or not the executors have it installed
  (``DAI_MLFLOW_SHIP_PACKAGE=0`` when the cluster installs the wheel itself);
* the license the driver sees (``DRIVERLESS_AI_LICENSE_KEY``, ``DRIVERLESS_AI_LICENSE_FILE``,
  ``~/.driverlessai/license.sig``, or the same names in ``score(env=...)``), copied to a private
  temporary file under a random name and sent with ``addFile``; executors hand it to the model
  as the same kind (key or file). It is never put in a Spark conf (visible in the UI and event
  logs), a log line or the job's closure. Without one on the driver, executors use their own.

Driver side; Python 3.8-safe.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Callable, Dict, Mapping, Optional, Tuple

from dai_mlflow.model.license import (
    LICENSE_FILE_ENV,
    LICENSE_KEY_ENV,
    LicenseNotFoundError,
    find_license,
)

SHIP_PACKAGE_ENV = "DAI_MLFLOW_SHIP_PACKAGE"
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
    tmp = dest.with_name(dest.name + ".part")
    with zipfile.ZipFile(str(tmp), "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if "__pycache__" in path.parts:
                continue
            zf.write(str(path), prefix + path.relative_to(folder).as_posix())
    tmp.replace(dest)
    return dest


def _once(spark: object, name: str, ship: Callable[[], str]) -> str:
    shipped = _shipped.setdefault(spark.sparkContext.applicationId, {})
    if name not in shipped:
        shipped[name] = ship()
    return shipped[name]


def ship_model(spark: object, model_dir: Path) -> Tuple[str, str]:
    """Send the model folder to the executors; (SparkFiles name, content key)."""
    key = model_key(model_dir)

    def _ship() -> str:
        archive = _zip_folder(model_dir, _scratch_dir() / f"dai-mlflow-model-{key}.zip")
        spark.sparkContext.addFile(str(archive))
        return archive.name

    return _once(spark, f"model:{key}", _ship), key


def ship_package(spark: object) -> Optional[str]:
    """Send this package to the Python workers (unless ``DAI_MLFLOW_SHIP_PACKAGE=0``)."""
    if os.environ.get(SHIP_PACKAGE_ENV, "1").strip().lower() in ("0", "false", "no"):
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


def ship_license(
    spark: object, env: Optional[Mapping[str, str]] = None
) -> Optional[Tuple[str, str]]:
    """Send the license the driver sees to the executors; (``key``|``file``, SparkFiles name).

    Args:
        spark: the session.
        env: variables given for the model (``score(env=...)``); they win over the driver's.

    Returns:
        None when the driver has no license (executors then use their own).
    """
    given = {k: v for k, v in (env or {}).items() if k in (LICENSE_KEY_ENV, LICENSE_FILE_ENV)}
    environ = {**os.environ, **given} if given else None
    try:
        source = find_license(environ)
    except LicenseNotFoundError:
        return None
    if source.kind == "key":
        data = (environ or os.environ)[LICENSE_KEY_ENV].strip().encode()
    else:
        data = Path(source.where).read_bytes()
    digest = hashlib.sha256(data).hexdigest()

    def _ship() -> str:
        path = _scratch_dir() / f"dai-mlflow-license-{uuid.uuid4().hex}"
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        spark.sparkContext.addFile(str(path))
        return path.name

    return source.kind, _once(spark, f"license:{source.kind}:{digest}", _ship)
