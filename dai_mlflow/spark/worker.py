"""The executor side of dai-mlflow's Spark path: what runs inside Spark Python workers.

On a worker's first batch the model's thin part is extracted once per content key. With
``env_manager="local"`` the model loads in the worker itself; with ``uv``/``virtualenv`` the
model's env is built or reused on this executor and one
:mod:`dai_mlflow.model.hooks.arrow_server` per worker (plus a spare) scores Arrow batches over
pipes. Runs in the executor's Python: pandas, pyarrow, PyYAML, MLflow only for ``local``;
Python 3.8-safe. See spark_inference/README.md, "How it works".
Over 400 lines: the executor's whole job (extract, env, model servers, Arrow batches) in one.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Deque, Dict, Iterator, Optional, Tuple

import pandas as pd

from dai_mlflow.envs.locks import file_lock
from dai_mlflow.envs.model_env import (
    INSTALLERS,
    ensure_model_env,
    env_root,
    hooks_package,
    model_env_spec,
)
from dai_mlflow.envs.processes import parent_death_signal, without_foreign_python
from dai_mlflow.envs.pythons import find_python
from dai_mlflow.envs.venvs import is_current, read_stamp, venv_python
from dai_mlflow.errors import say
from dai_mlflow.model.hooks import PACKAGE
from dai_mlflow.model.hooks.stdin_server import ERROR_MARKER
from dai_mlflow.model.license import LICENSE_FILE_ENV, LICENSE_KEY_ENV

WARM_SERVERS_ENV = "DAI_MLFLOW_WARM_SERVERS"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")
_TAIL_LINES = 50
# A server that dies mid-batch (killed, out of memory) is replaced and the batch sent again;
# a batch that kills every server it is given fails after this many new servers.
SERVER_RESTARTS = 2


class ModelError(RuntimeError):
    """The model (or its server) failed; the message is the model's own, one line."""


class ServerDied(ModelError):
    """The model server exited (killed, out of memory, crashed) instead of answering."""


@dataclass(frozen=True)
class ScoringPlan:
    """What an executor needs to score one model; pickled into the job's UDF.

    Attributes:
        model_file: ``SparkFiles`` name of the zipped model folder.
        model_key: content key of the model (the extraction folder's name).
        env_manager: ``local``, ``uv`` or ``virtualenv``.
        env_root: where executors keep model envs (None: their own default).
        license: (``key``|``file``, ``SparkFiles`` name) of the license the driver shipped, or
            None: executors use their own (environment, ``~/.driverlessai/license.sig``).
        env: other variables for the model.
        threads: BLAS/OpenMP threads of the model (``spark.task.cpus``).
        runtime: (``SparkFiles`` name, path in the model folder) of the runtime wheels the
            thin ``model_file`` lacks; empty when ``model_file`` is a complete model folder.
        runtime_key: content key of the runtime.
        env_id: key of the model's env inputs, under which executors remember the env built.
    """

    model_file: str
    model_key: str
    env_manager: str
    env_root: Optional[str] = None
    license: Optional[Tuple[str, str]] = None
    env: Tuple[Tuple[str, str], ...] = ()
    threads: int = 1
    runtime: Tuple[Tuple[str, str], ...] = ()
    runtime_key: str = ""
    env_id: str = ""


def _say(message: str) -> None:
    say(f"worker {os.getpid()}: {message}")


def _spark_file(name: str) -> Path:
    from pyspark import SparkFiles

    return Path(SparkFiles.get(name))


# ------------------------------------------------------------------------------ model folder
COMPLETE_MARKER = ".dai-mlflow-complete"  # written last into a folder made whole


def _build_once(dest: Path, fill: Callable[[Path], None], stamp: str) -> Path:
    """``dest`` as ``fill(folder)`` makes it, unless a complete copy is there: filled beside it
    under a lock, marked complete, renamed into place (whole or not at all)."""
    done = dest / COMPLETE_MARKER
    if done.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(dest.with_name(dest.name + ".lock")):
        if done.is_file():
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=str(dest.parent)))
        try:
            fill(tmp)
            (tmp / done.name).write_text(stamp + "\n")
            shutil.rmtree(str(dest), ignore_errors=True)
            os.rename(str(tmp), str(dest))
        finally:
            shutil.rmtree(str(tmp), ignore_errors=True)
    return dest


def extract_once(archive: Path, dest: Path) -> Path:
    """Extract ``archive`` to ``dest`` unless a complete copy is there (atomic rename)."""

    def extract(folder: Path) -> None:
        with zipfile.ZipFile(str(archive)) as zf:
            zf.extractall(str(folder))

    return _build_once(dest, extract, archive.name)


def model_dir(plan: ScoringPlan) -> Path:
    """This executor's copy of the plan's model folder (its thin part when ``plan.runtime``)."""
    root = env_root(plan.env_root)
    # Named after the shipped archive, not the model key alone: the same model can reach a node
    # as a thin part (the driver's archive) and whole (another archive), and neither may be
    # taken for the other.
    return extract_once(_spark_file(plan.model_file), root / "models" / Path(plan.model_file).stem)


def _link_or_copy(source: Path, dest: Path) -> None:
    try:
        os.link(str(source), str(dest))
    except OSError:  # another file system, or links not allowed
        shutil.copyfile(str(source), str(dest))


def complete_dir(plan: ScoringPlan, thin: Path) -> Path:
    """A complete model folder: the thin folder's files and the shipped runtime wheels.

    Files are hard-linked where the file system allows (no bytes copied), else copied; the
    folder appears whole or not at all (atomic rename).
    """

    def assemble(folder: Path) -> None:
        sources = {
            p.relative_to(thin).as_posix(): p
            for p in thin.rglob("*")
            if p.is_file() and p.name != COMPLETE_MARKER
        }
        # One link per path: a thin folder extracted by an older dai-mlflow holds the runtime
        # too, and a copy over a link would write into the thin folder's file.
        sources.update({rel: _spark_file(name) for name, rel in plan.runtime})
        for rel, source in sources.items():
            (folder / rel).parent.mkdir(parents=True, exist_ok=True)
            _link_or_copy(source, folder / rel)

    return _build_once(thin.with_name(f"{plan.model_key}-complete"), assemble, plan.model_key)


def _recorded_env(record: Path, thin: Path, installer: str) -> Optional[Path]:
    """The python of the env recorded for a runtime, if it is still there, whole, and of the
    interpreter this executor would build with today."""
    try:
        data = json.loads(record.read_text())
    except (OSError, ValueError):
        return None
    dest = Path(str(data.get("env", "")))
    if not data.get("env") or not is_current(dest, str(data.get("key", ""))):
        return None
    spec = model_env_spec(thin, installer)  # finds the interpreter offline, as a build would
    if find_python(spec.python).version != data.get("python"):
        return None
    return venv_python(dest)


def runtime_env(plan: ScoringPlan, thin: Path, installer: str) -> Path:
    """The python of the plan's model env; the runtime is used only when the env must be
    built here (or was built before this executor kept a record of it)."""
    records = env_root(plan.env_root) / "runtimes"
    records.mkdir(parents=True, exist_ok=True)
    record = records / f"{plan.env_id}-{installer}.json"
    with file_lock(records / f"{plan.env_id}-{installer}.lock"):
        python = _recorded_env(record, thin, installer)
        if python is not None:
            _say(f"model env reused: {python.parent.parent} (runtime {plan.runtime_key} not used)")
            return python
        complete = complete_dir(plan, thin)
        try:
            python = ensure_model_env(complete, installer, plan.env_root, progress=_say)
        finally:
            shutil.rmtree(str(complete), ignore_errors=True)
        dest = python.parent.parent
        stamp = read_stamp(dest) or {}
        data = {"env": str(dest), "key": stamp.get("key"), "python": stamp.get("python")}
        tmp = record.with_name(record.name + ".part")
        tmp.write_text(json.dumps(data) + "\n")
        os.replace(str(tmp), str(record))
    return python


# ------------------------------------------------------------------------------ license
def _private_dir() -> Optional[Path]:
    """A 0700 folder of this executor in its Spark scratch space (None: no such space known).

    Spark gives Python workers the executor's block manager folders in ``SPARK_LOCAL_DIRS``;
    the executor deletes them when it stops, and a standalone worker deletes the application's
    when it ends, so nothing put there outlives the application, even if the executor is
    killed.
    """
    local = [d for d in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if d.strip()]
    if not local or not os.path.isdir(local[0]):
        return None
    folder = Path(local[0]) / "dai-mlflow-private"
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o077:
        return None
    return folder


def license_file(name: str) -> Path:
    """This executor's copy of the shipped license, readable by its owner only.

    Spark fetches an added file once per executor, into the executor's working folder (on a
    standalone worker ``work/app-*/<n>/``, kept after the application), so the first Python
    worker to need it makes it 0600 and moves it to the executor's private scratch folder,
    where later workers of the executor find it and which Spark removes with the executor.
    The license is not removed when a Python worker exits: the executor fetches a file only
    once, so the next worker of the same application would have none.
    """
    fetched = _spark_file(name).absolute()
    folder = _private_dir()
    if folder is None:  # no scratch space: it stays where Spark put it, owner-only
        with contextlib.suppress(OSError):
            os.chmod(str(fetched), 0o600)
        return fetched
    dest = folder / name
    # Hidden: the empty lock file is no copy of the license and is not named like one.
    with file_lock(folder / f".{name}.lock"):
        if not dest.is_file() and fetched.is_file():
            os.chmod(str(fetched), 0o600)
            try:
                os.rename(str(fetched), str(dest))
            except OSError:  # another file system: copy, then remove the fetched copy
                tmp = folder / f".{name}.part"
                fd = os.open(str(tmp), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(fetched.read_bytes())
                os.rename(str(tmp), str(dest))
                fetched.unlink()
    if not dest.is_file():
        raise ModelError(
            f"the license the driver shipped is missing on this executor ({fetched}); "
            "run the job again"
        )
    return dest


# ------------------------------------------------------------------------------ environment
def model_environ(plan: ScoringPlan) -> Dict[str, str]:
    """The model's variables: this worker's, minus Spark's, plus license, threads and ``env``."""
    env = without_foreign_python(os.environ)
    env.update(dict.fromkeys(THREAD_VARS, str(plan.threads)))
    env.update(dict(plan.env))
    if plan.license is not None:
        kind, name = plan.license
        path = license_file(name)
        env.pop(LICENSE_KEY_ENV, None)
        env.pop(LICENSE_FILE_ENV, None)
        if kind == "key":
            env[LICENSE_KEY_ENV] = path.read_text().strip()
        else:
            env[LICENSE_FILE_ENV] = str(path)
    return env


# ------------------------------------------------------------------------------ model server
class ModelServer:
    """One :mod:`~dai_mlflow.model.hooks.arrow_server` process and the pipes to it."""

    def __init__(self, python: Path, hooks: Path, environ: Dict[str, str], workdir: Path) -> None:
        self.python = python
        self.model: Optional[str] = None
        self.tail: Deque[str] = collections.deque(maxlen=_TAIL_LINES)
        req_read, req_write = os.pipe()
        ans_read, ans_write = os.pipe()
        env = dict(environ)
        env["PYTHONPATH"] = str(hooks)
        cmd = [str(python), "-m", f"{PACKAGE}.arrow_server"]
        cmd += ["--requests", str(req_read), "--answers", str(ans_write)]
        try:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=str(workdir),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(req_read, ans_write),
                preexec_fn=parent_death_signal,
            )
        finally:
            os.close(req_read)
            os.close(ans_write)
        self.requests = os.fdopen(req_write, "wb", buffering=1 << 16)
        self.answers = os.fdopen(ans_read, "rb", buffering=1 << 16)
        self._logger = threading.Thread(target=self._pass_on_output, daemon=True)
        self._logger.start()

    def _pass_on_output(self) -> None:
        assert self.proc.stdout is not None  # started with stdout=PIPE
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace")
            self.tail.append(line.rstrip("\n"))
            sys.stderr.write("[model server] " + line)
        sys.stderr.flush()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _died(self) -> ServerDied:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._logger.join(timeout=2)
        lines = [ln.strip() for ln in self.tail if ln.strip()]
        marked = [ln.split(ERROR_MARKER, 1)[1].strip() for ln in lines if ERROR_MARKER in ln]
        detail = (marked or lines or ["no output"])[-1]
        return ServerDied(f"the model server exited with code {self.proc.poll()}: {detail}")

    def _send(self, header: Dict[str, Any], table: Any = None) -> Dict[str, Any]:
        import pyarrow as pa

        try:
            self.requests.write(json.dumps(header).encode() + b"\n")
            if table is not None:
                with pa.ipc.new_stream(self.requests, table.schema) as writer:
                    writer.write_table(table)
            self.requests.flush()
        except (BrokenPipeError, OSError, ValueError) as e:
            raise self._died() from e
        line = self.answers.readline()
        if not line.endswith(b"\n"):  # nothing, or cut off by the server's death
            raise self._died()
        answer = json.loads(line)
        if "error" in answer:
            raise ModelError(answer["error"])
        return answer

    def load(self, model: Path) -> float:
        """Load the model in the server; the seconds it took there."""
        answer = self._send({"op": "load", "model": str(model)})
        self.model = str(model)
        return float(answer.get("seconds", 0.0))

    def score(self, frame: pd.DataFrame, params: Optional[Dict[str, bool]]) -> pd.DataFrame:
        """Predictions of a batch, as DAI's output frame."""
        import pyarrow as pa

        table = pa.Table.from_pandas(frame, preserve_index=False)
        self._send({"op": "score", "params": params or None}, table)
        try:
            answer = pa.ipc.open_stream(self.answers).read_all()
        except Exception as e:  # a stream cut off by the server's death
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
            if not self.alive():
                raise self._died() from e
            self.stop()  # the pipe is out of step: this server cannot be used again
            raise ModelError(f"the model server sent a broken answer: {e}") from e
        return answer.to_pandas()

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.requests.close()
        if self.alive():
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
        if self.alive():
            self.proc.kill()


# ------------------------------------------------------------------------------ per worker
_lock = threading.Lock()
# (model key, python, environment digest) -> a server with that model loaded (at most one)
_loaded: Dict[Tuple[str, str, str], ModelServer] = {}
# (python, environment digest) -> a started server with no model yet
_spares: Dict[Tuple[str, str], ModelServer] = {}
_local_models: Dict[str, Any] = {}
_envs: Dict[Tuple[str, str, str], Path] = {}


def spares_enabled() -> bool:
    """Spare servers are on unless ``DAI_MLFLOW_WARM_SERVERS=0`` on the executor."""
    return os.environ.get(WARM_SERVERS_ENV, "1").strip().lower() not in ("0", "false", "no")


def _digest(environ: Dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(sorted(environ.items())).encode()).hexdigest()


def _model_python(plan: ScoringPlan, folder: Path) -> Path:
    key = (plan.model_key, plan.env_manager, str(env_root(plan.env_root)))
    if key not in _envs:
        installer = INSTALLERS[plan.env_manager]
        if plan.runtime:
            _envs[key] = runtime_env(plan, folder, installer)
        else:
            _envs[key] = ensure_model_env(folder, installer, plan.env_root, progress=_say)
    return _envs[key]


def _start(python: Path, environ: Dict[str, str], root: Path) -> ModelServer:
    workdir = root / "work"
    workdir.mkdir(parents=True, exist_ok=True)
    return ModelServer(python, hooks_package(root), environ, workdir)


def server_for(plan: ScoringPlan) -> ModelServer:
    """This worker's server with the plan's model loaded: kept, a spare, or a new one."""
    folder = model_dir(plan)
    python = _model_python(plan, folder)
    environ = model_environ(plan)
    env_key = (str(python), _digest(environ))
    key = (plan.model_key, *env_key)
    root = env_root(plan.env_root)
    with _lock:
        kept = _loaded.get(key)
        if kept is not None and kept.alive():
            return kept
        for other in list(_loaded):
            _loaded.pop(other).stop()
        server = _spares.pop(env_key, None)
        if server is None or not server.alive():
            server = _start(python, environ, root)
        if spares_enabled():  # started now, it imports while this one loads the model
            for spare in list(_spares):
                _spares.pop(spare).stop()
            with contextlib.suppress(OSError):
                _spares[env_key] = _start(python, environ, root)
        try:
            server.load(folder)
        except ModelError:
            server.stop()
            raise
        _loaded[key] = server
    return server


def _local_model(plan: ScoringPlan) -> Any:
    """The model loaded in this worker (``env_manager="local"``), once per process."""
    if plan.model_key not in _local_models:
        import mlflow.pyfunc

        folder = model_dir(plan)
        os.environ.update({k: v for k, v in model_environ(plan).items() if k not in THREAD_VARS})
        model = mlflow.pyfunc.load_model(str(folder), suppress_warnings=True)  # its own env
        _local_models[plan.model_key] = model
    return _local_models[plan.model_key]


def scorer(plan: ScoringPlan) -> Callable[[pd.DataFrame], pd.DataFrame]:
    """A function from an input batch to DAI's output frame, for this worker."""
    if plan.env_manager == "local":
        model = _local_model(plan)
        try:  # dai-mlflow's pyfunc coerces types itself: skip MLflow's per-batch checks
            python_model = model.unwrap_python_model()
        except Exception:  # not a PythonModel: go through pyfunc
            return model.predict
        return lambda frame: python_model.predict(None, frame)
    return _ServerScorer(plan)


class _ServerScorer:
    """Batches through this worker's server; a server that died is replaced, the batch resent.

    Only a death is retried (at most :data:`SERVER_RESTARTS` new servers per batch): a model
    error (a bad row, no license) is the model's answer and fails the task at once.
    """

    def __init__(self, plan: ScoringPlan) -> None:
        self.plan = plan
        self.server: Optional[ModelServer] = None
        self._call(lambda server: None)  # load now: a load error shows before the first batch

    def _call(self, use: Callable[[ModelServer], Any]) -> Any:
        for restart in range(SERVER_RESTARTS + 1):
            try:
                if self.server is None or not self.server.alive():
                    self.server = server_for(self.plan)
                return use(self.server)
            except ServerDied as e:
                self.server = None
                if restart == SERVER_RESTARTS:
                    raise
                _say(f"{e}; starting a new model server, sending the batch again")
        raise AssertionError("unreachable")

    def __call__(self, frame: pd.DataFrame) -> pd.DataFrame:
        return self._call(lambda server: server.score(frame, None))


def make_udf(plan: ScoringPlan, result_type: str) -> Any:
    """The pandas UDF of a job: struct of the model's inputs -> struct of DAI's outputs."""
    from pyspark.sql.functions import pandas_udf

    def dai_mlflow_score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        try:
            score_batch = scorer(plan)
            for batch in batches:
                out = score_batch(batch)
                out.index = batch.index
                yield out
        except ModelError as e:
            raise RuntimeError(f"{ERROR_MARKER} {e}") from None
        except Exception as e:
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            message = f"{type(e).__name__}: {lines[0] if lines else ''}"
            raise RuntimeError(f"{ERROR_MARKER} {message}") from e

    # PySpark's stubs have no overload for the form that takes the kind from the type hints.
    return pandas_udf(dai_mlflow_score, result_type)  # type: ignore[call-overload]
