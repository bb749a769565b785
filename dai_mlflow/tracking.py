"""The tracking store of the entry point, bridging MLflow 2.17 clients to MLflow 3 stores.

:func:`tracking_store` uses ``MLFLOW_TRACKING_URI`` or MLflow 3's ``sqlite:///<cwd>/mlflow.db``,
through a transient loopback ``mlflow server`` when this MLflow cannot open that sqlite file (the
DAI 1.10 project env). Also the shared tracking names (aliases, tags) and model download.
Project env side: Python 3.8-safe, imports MLflow only when a store is used. See
docs/logging.md, "The tracking store".
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from dai_mlflow.envs.processes import (
    free_port,
    last_log_line,
    start_logged,
    stop_session,
    wait_answering,
    without_foreign_python,
)
from dai_mlflow.errors import DaiMlflowError, one_line, say

SERVER_PYTHON_ENV = "DAI_MLFLOW_SERVER_PYTHON"
# What dai-mlflow writes to a store: its run and version tags, and the aliases it moves.
TAG_PREFIX = "dai_mlflow."
CHAMPION = "champion"
CHALLENGER = "challenger"
DEFAULT_DB_NAME = "mlflow.db"
_READY_TIMEOUT_S = 90.0


class TrackingError(DaiMlflowError):
    """The tracking store cannot be reached or bridged."""


def scratch_store_environ(store: Path) -> Dict[str, str]:
    """MLflow settings of a process that loads a local model and tracks nothing: a file store
    of its own at ``store``. Loading a model turns tracing on, which opens the tracking store,
    and MLflow 2.17 (DAI 1.10 envs) cannot open an MLflow 3 sqlite store."""
    return {"MLFLOW_TRACKING_URI": store.as_uri(), "MLFLOW_ALLOW_FILE_STORE": "true"}


def default_tracking_uri(cwd: Optional[Path] = None) -> str:
    """MLflow 3.x's default: ``sqlite:///<cwd>/mlflow.db``."""
    return f"sqlite:///{(cwd or Path.cwd()).resolve() / DEFAULT_DB_NAME}"


def sqlite_path(uri: str) -> Optional[Path]:
    """The file of a ``sqlite:///`` URI, or None for other schemes."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :].split("?")[0])


def _mlflow_location() -> Tuple[str, Optional[Path]]:
    """This env's mlflow version and package folder, found without importing mlflow (seconds
    that the bridge server's start-up can use instead)."""
    from importlib import metadata, util

    spec = util.find_spec("mlflow")
    folder = Path(spec.origin).parent if spec is not None and spec.origin else None
    for dist in ("mlflow", "mlflow-skinny"):
        try:
            return metadata.version(dist), folder
        except metadata.PackageNotFoundError:
            continue
    import mlflow

    return mlflow.__version__, Path(mlflow.__file__).parent


def _known_revisions(package: Optional[Path]) -> List[str]:
    versions = (package or Path()) / "store" / "db_migrations" / "versions"
    return [p.name.split("_")[0] for p in versions.glob("*.py") if not p.name.startswith("__")]


def store_revision(db: Path) -> Optional[str]:
    """The alembic revision of an MLflow sqlite store, or None when it has none (yet)."""
    if not db.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None


def needs_bridge(uri: str) -> bool:
    """True when this process's mlflow cannot (or should not) open the sqlite store itself.

    An mlflow older than 3 bridges when the store is newer than its migrations, and also when
    the store does not exist yet: a store it created would be too old for the 3.x tools.
    """
    db = sqlite_path(uri)
    if db is None:
        return False
    version, package = _mlflow_location()
    if int(version.split(".")[0]) >= 3:
        return False
    revision = store_revision(db)
    return revision is None or revision not in _known_revisions(package)


# The version from the package metadata: importing mlflow to ask would cost seconds.
_VERSION_PROGRAM = (
    "from importlib import metadata as m\n"
    "try:\n    print(m.version('mlflow'))\n"
    "except m.PackageNotFoundError:\n    print(m.version('mlflow-skinny'))\n"
)


def _mlflow_major(python: str) -> int:
    try:
        out = subprocess.run(
            [python, "-c", _VERSION_PROGRAM],
            capture_output=True,
            text=True,
            timeout=60,
            env=without_foreign_python(os.environ, drop=("MLFLOW_RUN_ID",)),
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    try:
        return int(out.stdout.strip().split(".")[0]) if out.returncode == 0 else 0
    except ValueError:
        return 0


def _parent_pythons() -> List[str]:
    """Interpreters of ancestor processes that run ``mlflow`` (nearest first)."""
    found = []
    pid = os.getppid()
    for _ in range(16):
        if pid <= 1:
            break
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            break
        args = [a.decode(errors="replace") for a in cmdline if a]
        if any(Path(a).name == "mlflow" or a == "mlflow.cli" for a in args[:3]):
            first = args[0] if args else ""
            if "python" in Path(first).name and Path(first).is_absolute():
                found.append(first)
            else:
                with contextlib.suppress(OSError):
                    found.append(os.readlink(f"/proc/{pid}/exe"))
        ppid = [ln for ln in status.splitlines() if ln.startswith("PPid:")]
        pid = int(ppid[0].split()[1]) if ppid else 0
    return found


def _path_pythons() -> List[str]:
    """The interpreter of an ``mlflow`` command on PATH (its ``#!`` line), if any."""
    import shutil

    command = shutil.which("mlflow")
    if not command:
        return []
    try:
        with open(command, "rb") as f:
            first = f.readline().decode(errors="replace").strip()
    except OSError:
        return []
    python = first[2:].strip().split()[0] if first.startswith("#!") and first[2:].strip() else ""
    return [python] if python and Path(python).is_absolute() else []


def server_python() -> str:
    """An interpreter with mlflow >= 3 to run the bridge server.

    Raises:
        TrackingError: none found.
    """
    explicit = os.environ.get(SERVER_PYTHON_ENV)
    if explicit:
        if _mlflow_major(explicit) < 3:
            raise TrackingError(
                f"{SERVER_PYTHON_ENV}={explicit} has no mlflow >= 3; "
                "point it at venvs/launcher/bin/python"
            )
        return explicit
    candidates = _parent_pythons() + _path_pythons()
    for python in candidates:
        if Path(python).exists() and _mlflow_major(python) >= 3:
            return python
    raise TrackingError(
        "the sqlite tracking store needs mlflow >= 3 but this env has an older mlflow, and no "
        f"mlflow >= 3 interpreter was found; set {SERVER_PYTHON_ENV} (e.g. to "
        "venvs/launcher/bin/python), or set MLFLOW_TRACKING_URI to a tracking server"
    )


def _wait_ready(url: str, proc: subprocess.Popen, log: Path) -> None:
    why = wait_answering(f"{url}/health", lambda: proc.poll() is None, _READY_TIMEOUT_S)
    if why == "exited":
        raise TrackingError(
            f"the bridge tracking server exited ({proc.returncode}): {last_log_line(log)}"
        )
    if why:
        raise TrackingError(f"the bridge tracking server did not answer on {url} within 90 s")


@dataclass(frozen=True)
class TrackingStore:
    """The store this process talks to; ``wait()`` blocks until it answers (bridge start-up
    runs in the background meanwhile, so callers do their slow local work first)."""

    uri: str
    wait: Callable[[], None]


def _no_wait() -> None:
    return None


def _raise(error: Exception) -> None:
    raise error


@contextlib.contextmanager
def bridge_server(uri: str, python: Optional[str] = None) -> Iterator[TrackingStore]:
    """Start ``mlflow server`` on loopback over the store ``uri``; yield its http URL.

    The server starts in the background; ``wait()`` of the yielded store blocks until it is
    ready. It is stopped when the block exits, whatever happens inside.
    """
    python = python or server_python()
    port = free_port()
    db = sqlite_path(uri)
    workdir = db.parent if db else Path(tempfile.gettempdir())
    url = f"http://127.0.0.1:{port}"
    with tempfile.NamedTemporaryFile(prefix="dai-mlflow-server-", suffix=".log", delete=False) as f:
        log = Path(f.name)
    cmd = [
        python,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        # What a 3.x client uses for this store: artifacts under <store folder>/mlruns, written
        # directly by clients (not proxied), so models stay loadable without this server.
        "--default-artifact-root",
        str(workdir / "mlruns"),
        "--no-serve-artifacts",
    ]
    env = without_foreign_python(os.environ, drop=("MLFLOW_RUN_ID",))
    # The bridge serves one run's REST calls: no background job runner (saves a process).
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    proc = start_logged(cmd, env, log, cwd=workdir)
    ready: List[bool] = []

    def _wait() -> None:
        if not ready:
            _wait_ready(url, proc, log)
            ready.append(True)
            say(f"tracking: {uri} through a loopback mlflow server at {url} ({python})")

    try:
        yield TrackingStore(url, _wait)
    finally:
        # Every request has been answered; a graceful stop would wait for the client's idle
        # keep-alive connections to time out (seconds at the end of every run).
        stop_session(proc, grace=0.5)
        with contextlib.suppress(OSError):
            log.unlink()


@contextlib.contextmanager
def tracking_store(wait: bool = True) -> Iterator[TrackingStore]:
    """Point this process at a usable tracking store; yield it.

    ``MLFLOW_TRACKING_URI`` when set (bridged if it is a sqlite store this mlflow cannot open),
    else MLflow 3.x's default ``sqlite:///<cwd>/mlflow.db`` (bridged the same way).

    Args:
        wait: block until the store answers before yielding. With False, a bridge starts in the
            background and the caller must call ``wait()`` on the yielded store before its
            first tracking call (the entry point stages and validates the model meanwhile).
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()
    if not needs_bridge(uri):
        import mlflow

        mlflow.set_tracking_uri(uri)
        yield TrackingStore(uri, _no_wait)
        return
    try:
        python = server_python()
    except TrackingError as e:
        if wait:
            raise
        # The caller checks its inputs first: a bad pipeline is reported as such, and this
        # error only when the store is needed.
        yield TrackingStore(uri, functools.partial(_raise, e))
        return
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    with bridge_server(uri, python) as store:
        # mlflow is imported once the bridge server is starting: the two overlap.
        import mlflow

        os.environ["MLFLOW_TRACKING_URI"] = store.uri
        mlflow.set_tracking_uri(store.uri)
        try:
            if wait:
                store.wait()
            yield store
        finally:
            if previous is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = previous


class ModelNotFoundError(DaiMlflowError):
    """A model URI does not resolve to a model folder."""


def download_model(model_uri: str, dst: Optional[Path] = None) -> Path:
    """The local folder of a model: a path as it is, else downloaded with MLflow.

    ``models:/`` and ``runs:/`` URIs are resolved through :func:`tracking_store`, which bridges
    an MLflow 2.x client (the Python 3.8 Spark venv) to a database store made by MLflow 3.x.

    Raises:
        ModelNotFoundError: the URI does not resolve (one line, MLflow's reason).
    """
    import mlflow.artifacts

    if Path(model_uri).is_dir():
        return Path(model_uri).resolve()
    scheme = model_uri.split(":", 1)[0] if ":" in model_uri else ""
    store = tracking_store() if scheme in ("models", "runs") else contextlib.nullcontext()
    try:
        with store:
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=model_uri, dst_path=str(dst) if dst else None
            )
    except DaiMlflowError:
        raise
    except Exception as e:
        raise ModelNotFoundError(f"cannot download model {model_uri}: {one_line(e)}") from e
    return Path(path)
