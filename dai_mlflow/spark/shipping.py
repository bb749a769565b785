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
  On a master that is not ``local``, it is shipped only when Spark authenticates
  (``spark.authenticate``; on standalone with ``spark.authenticate.secret``) and encrypts
  (``spark.network.crypto.enabled``) its connections: otherwise Spark's file server hands it to
  anyone who reaches the driver's port, in clear text, and :class:`LicenseShippingError` stops
  the job before it starts. ``DAI_MLFLOW_SHIP_LICENSE=0`` on the driver ships none: the nodes
  provide their own.

Driver side; Python 3.8-safe.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import shutil
import tempfile
import uuid
import zipfile
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

from dai_mlflow.errors import DaiMlflowError
from dai_mlflow.model.license import (
    LICENSE_FILE_ENV,
    LICENSE_KEY_ENV,
    LicenseNotFoundError,
    find_license,
)

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
    spark: object, env: Optional[Mapping[str, str]] = None
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
