"""Registry look-ups of the lifecycle: alias -> version, download, guarded alias moves.

Works with mlflow 2.17 (through :mod:`dai_mlflow.tracking`'s bridge) and 3.x clients. Aliases
are only ever moved by :func:`move_alias`, which first checks that the alias still points where
the caller saw it (so a concurrent promotion is not silently overwritten).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Optional, TypeVar

from dai_mlflow.errors import one_line
from dai_mlflow.lifecycle.errors import LifecycleError
from dai_mlflow.tracking import CHAMPION, TAG_PREFIX

if TYPE_CHECKING:  # importing mlflow costs seconds: only where a client is made
    from mlflow import MlflowClient

BASELINE_RUN_TAG = TAG_PREFIX + "prediction_baseline_run"
PREDICTION_BASELINE_FILE = "prediction_baseline.json"
T = TypeVar("T")


@dataclass(frozen=True)
class ModelVersionRef:
    """One registered version: ``models:/<name>/<version>``."""

    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class ModelRequest:
    """What every lifecycle request starts with: the registered model's name (not empty)."""

    model_name: str

    def __post_init__(self) -> None:
        if not self.model_name.strip():
            raise LifecycleError("model_name is empty; pass the registered model's name")


def client() -> MlflowClient:
    """An MlflowClient on the current tracking and registry URIs."""
    import mlflow

    return mlflow.MlflowClient()


def _is_missing(exc: Exception) -> bool:
    text = f"{getattr(exc, 'error_code', '')} {exc}"
    return "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower()


def version_by_alias(name: str, alias: str) -> Optional[ModelVersionRef]:
    """The version ``alias`` points at, or None when the model has no such alias.

    Raises:
        LifecycleError: the registered model does not exist or the registry cannot be read.
    """
    c = client()
    try:
        c.get_registered_model(name)
    except Exception as e:
        if _is_missing(e):
            raise LifecycleError(
                f"no registered model {name!r}; log one with "
                f"`mlflow run . -P pipeline=<scorer.zip> -P model_name={name}`"
            ) from e
        raise LifecycleError(f"cannot read registered model {name!r}: {one_line(e)}") from e
    try:
        mv = c.get_model_version_by_alias(name, alias)
    except Exception as e:
        if _is_missing(e):
            return None
        raise LifecycleError(f"cannot read {name}@{alias}: {one_line(e)}") from e
    return ModelVersionRef(name, str(mv.version), str(mv.run_id or ""))


def require_alias(name: str, alias: str) -> ModelVersionRef:
    """Like :func:`version_by_alias`, but a missing alias is an error with the fix."""
    ref = version_by_alias(name, alias)
    if ref is None:
        raise LifecycleError(
            f"model {name!r} has no @{alias} version; register one with "
            f"`mlflow run . -P pipeline=<scorer.zip> -P model_name={name} -P alias={alias}`"
            + (" or run the validate entry point" if alias == CHAMPION else "")
        )
    return ref


def download(ref: ModelVersionRef, dst: Path) -> Path:
    """Download the version's model folder into ``dst`` (created); return the folder."""
    import mlflow.artifacts

    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=ref.uri, dst_path=str(dst)))
    except Exception as e:
        raise LifecycleError(f"cannot download {ref.uri}: {one_line(e)}") from e


def move_alias(name: str, alias: str, version: str, expected: Optional[str]) -> None:
    """Point ``alias`` at ``version`` if it still points at ``expected`` (None: unset).

    Raises:
        LifecycleError: the alias moved meanwhile (nothing is changed), or the move failed.
    """
    current = version_by_alias(name, alias)
    now = current.version if current else None
    if now != expected:
        raise LifecycleError(
            f"{name}@{alias} moved from version {expected} to {now} while validating; "
            "nothing was changed — run validate again"
        )
    try:
        client().set_registered_model_alias(name, alias, version)
    except Exception as e:
        raise LifecycleError(f"setting {name}@{alias} failed: {one_line(e)}") from e


def set_version_tag(ref: ModelVersionRef, key: str, value: str) -> None:
    """Tag a model version (best effort is not enough here: errors propagate)."""
    client().set_model_version_tag(ref.name, ref.version, key, value)


def delete_version_tag(ref: ModelVersionRef, key: str) -> None:
    """Remove a model version's tag (no-op when it has none)."""
    if version_tag(ref, key) is not None:
        client().delete_model_version_tag(ref.name, ref.version, key)


def version_tag(ref: ModelVersionRef, key: str) -> Optional[str]:
    """A tag of a model version, or None."""
    mv = client().get_model_version(ref.name, ref.version)
    tags = getattr(mv, "tags", None) or {}
    return tags.get(key)


def read_run_file(run_id: str, path: str, read: Callable[[Path], T]) -> Optional[T]:
    """``read(local copy)`` of one artifact file of a run, or None when the run has no such file;
    the download is removed either way.

    Raises:
        LifecycleError: the download failed for another reason.
    """
    import mlflow.artifacts

    tmp = Path(tempfile.mkdtemp(prefix="dai-mlflow-artifact-"))
    try:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=str(tmp)
            )
        except Exception as e:
            if _is_missing(e) or "No such file" in str(e):
                return None
            raise LifecycleError(f"cannot download {path} of run {run_id}: {one_line(e)}") from e
        return read(Path(local))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def log_params_once(params: Dict[str, object]) -> None:
    """Log params of the active run, skipping keys it already has.

    Inside ``mlflow run`` the entry point's parameters are logged already, as the user typed
    them; logging a key again with another spelling (a resolved path) would be an error.
    """
    import mlflow

    run = mlflow.active_run()
    existing = mlflow.MlflowClient().get_run(run.info.run_id).data.params if run else {}
    fresh = {k: str(v) for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)
