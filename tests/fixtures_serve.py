"""Serving fixtures (loaded by tests/conftest.py): live servers on loopback and the scorer's truth.

- ``serve_pool`` (module scope): starts servers on free loopback ports on demand, waits for
  ``/ping``, reuses each for the whole test module and stops every one at the end (process
  group SIGTERM, then SIGKILL), so no process outlives the module. ``pool.start(specs)`` starts
  several at once (they spend their start-up waiting on env restores and scorer start-up).
  Kinds of :class:`ServerSpec`:

  * ``serve-local``: ``mlflow models serve --env-manager local`` run from the model's own env
    (its Python and MLflow: 2.17 on Python 3.8 for DAI 1.10, so the model folder is served
    since MLflow 2.17 cannot read the 3.x test store);
  * ``serve-uv``: plain ``mlflow models serve -m models:/... --env-manager uv`` from
    ``venvs/launcher``, offline (``dai_mlflow.serve.server.offline_build_env``: the tool dir of
    ``dai_mlflow.envs.offline``); MLflow 3 serves with uvicorn inside the env, and a DAI 1.10
    env (MLflow 2.17) through the serving shim the model carries (gunicorn);
  * ``serve-wrapped-uv``: ``python -m dai_mlflow.serve -m models:/... --env-manager uv``: the
    same env restore, served by the env's own MLflow (the way for DAI 1.10);
  * ``rpc-uv``: ``python -m dai_mlflow.serve.rpc --model-uri models:/...`` from ``venvs/launcher``
    (restores the model env like ``serve-uv`` and re-executes there);
  * ``rpc-local``: ``python -m dai_mlflow.serve.rpc --env-manager local`` with the model's own
    Python.

- ``scorer_truth(model) -> dict``: the scorer's own answers, computed in the model's env with
  the experiment wheel unzipped on its own: ``score`` of the first rows as text (as DAI's HTTP
  clients send them), ``score_batch`` of the sample csv (plain, contributions, margins) and the
  exact float records it scored (requests are built from them, so JSON carries the same bits),
  column names, transformed names, labels. Cached by content under ``tests/.cache/truth``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Sequence

import pytest
from filelock import FileLock

from dai_mlflow.envs.model_env import model_python_version
from dai_mlflow.envs.processes import free_port, start_logged, stop_session, wait_answering
from dai_mlflow.serve.server import offline_build_env, serve_command
from tests.fixtures_model import (
    LAUNCHER_BIN,
    LoggedDaiModel,
    get_logged_model,
    model_python,
    run_env,
)
from tests.fixtures_standin import forged_license

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE = REPO_ROOT / "tests" / ".cache"
KINDS = ("serve-local", "serve-uv", "serve-wrapped-uv", "rpc-uv", "rpc-local")
# Start-up budget: a cold uv restore of a model env installs numpy/pandas/mlflow from uv's cache.
START_TIMEOUT = float(os.environ.get("DAI_MLFLOW_TEST_SERVE_TIMEOUT", "600"))
TRUTH_ROWS = 20


@dataclass(frozen=True)
class ServerSpec:
    """Which server: ``kind`` (see the module docstring), DAI line and problem, and its license:
    ``valid``, ``none``, or ``invalid`` (a file that exists but fails verification)."""

    kind: str
    line: str
    problem: str
    license: str = "valid"

    @property
    def name(self) -> str:
        suffix = "" if self.license == "valid" else f"-{self.license}-license"
        return f"{self.kind}-{self.line}-{self.problem}{suffix}"


@dataclass
class LiveServer:
    """A running server: ``url`` is its base (``http://127.0.0.1:PORT``)."""

    spec: ServerSpec
    model: LoggedDaiModel
    url: str
    proc: subprocess.Popen
    log: Path
    extra: Dict[str, Any] = field(default_factory=dict)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


def _command(spec: ServerSpec, model: LoggedDaiModel, port: int, workdir: Path) -> tuple:
    """(argv, env) for ``spec``; the license is passed only through the environment."""
    licenses = {
        "valid": model.license_env,
        "none": {},
        "invalid": {"DRIVERLESS_AI_LICENSE_FILE": str(forged_license(workdir / "forged.sig"))},
    }
    env = run_env(licenses[spec.license])
    env["HOME"] = str(workdir)  # no ~/.driverlessai/license.sig of the developer's
    # The tool folders restored envs point at live as long as the env root (the test cache).
    env["XDG_CACHE_HOME"] = str(CACHE / "xdg")
    if spec.kind == "serve-local":
        python = model_python(model)
        env["PATH"] = os.pathsep.join([str(python.parent), env["PATH"]])
        env["VIRTUAL_ENV"] = str(python.parent.parent)
        cmd = serve_command(str(python.parent / "mlflow"), str(model.local_dir), port, "local")
        if spec.line == "2":  # MLflow 3 in the model env reads the registry
            env["MLFLOW_TRACKING_URI"] = model.tracking_uri
            cmd = serve_command(str(python.parent / "mlflow"), model.model_uri, port, "local")
        return cmd, env
    if spec.kind == "rpc-local":
        python = model_python(model)
        env["PYTHONPATH"] = str(REPO_ROOT)
        env["MLFLOW_TRACKING_URI"] = model.tracking_uri
        uri = model.model_uri if spec.line == "2" else str(model.local_dir)
        cmd = [str(python), "-m", "dai_mlflow.serve.rpc", "--env-manager", "local"]
        return [*cmd, "--model-uri", uri, "--port", str(port)], env
    # uv kinds run from venvs/launcher, resolve models:/ URIs and restore the env offline.
    env.update(offline_build_env(model_python_version(model.local_dir), env["PATH"]))
    env["MLFLOW_TRACKING_URI"] = model.tracking_uri
    if spec.kind == "serve-uv":
        return serve_command(str(LAUNCHER_BIN / "mlflow"), model.model_uri, port, "uv"), env
    env["PYTHONPATH"] = str(REPO_ROOT)
    if spec.kind == "serve-wrapped-uv":
        cmd = [str(LAUNCHER_BIN / "python"), "-m", "dai_mlflow.serve", "--env-manager", "uv"]
        return [*cmd, "-m", model.model_uri, "-p", str(port)], env
    if spec.kind == "rpc-uv":
        cmd = [str(LAUNCHER_BIN / "python"), "-m", "dai_mlflow.serve.rpc"]
        return [*cmd, "--model-uri", model.model_uri, "--port", str(port)], env
    raise ValueError(f"unknown server kind {spec.kind!r}; one of {KINDS}")


class ServerPool:
    """Servers of one test module; :meth:`close` stops them all."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.servers: Dict[ServerSpec, LiveServer] = {}

    def launch(self, spec: ServerSpec) -> LiveServer:
        """Start ``spec`` without waiting for it (idempotent)."""
        if spec in self.servers:
            return self.servers[spec]
        model = get_logged_model(spec.line, spec.problem)
        workdir = self.folder / spec.name
        workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        cmd, env = _command(spec, model, port, workdir)
        log = workdir / "server.log"
        proc = start_logged(cmd, env, log, cwd=workdir)
        server = LiveServer(spec, model, f"http://127.0.0.1:{port}", proc, log)
        self.servers[spec] = server
        return server

    def restore_envs(self, specs: Sequence[ServerSpec]) -> None:
        """Restore the env of each uv server, one at a time, before any server starts.

        MLflow names model envs by their requirements (one per DAI version) and takes a folder
        that exists for a built env: plain ``mlflow models serve`` processes started together on
        a new env would race, the later one serving from a half-built env.
        """
        for spec in specs:
            if spec.kind not in ("serve-uv", "serve-wrapped-uv", "rpc-uv"):
                continue
            model = get_logged_model(spec.line, spec.problem)
            _, env = _command(spec, model, 0, self.folder)
            code = (
                "import sys; from pathlib import Path; from dai_mlflow.serve.server import "
                "prepare_model_env; prepare_model_env(Path(sys.argv[1]), 'uv')"
            )
            proc = subprocess.run(
                [str(LAUNCHER_BIN / "python"), "-c", code, str(model.local_dir)],
                env={**env, "PYTHONPATH": str(REPO_ROOT)},
                cwd=str(self.folder),
                capture_output=True,
                text=True,
                timeout=START_TIMEOUT,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]

    def start(self, specs: Sequence[ServerSpec]) -> List[LiveServer]:
        """Start all of ``specs`` at once and wait until each answers ``/ping``."""
        # Models first, one at a time (the logging cache serialises them anyway).
        for spec in specs:
            get_logged_model(spec.line, spec.problem)
        self.restore_envs(specs)
        servers = [self.launch(s) for s in specs]
        with ThreadPoolExecutor(max_workers=max(1, len(servers))) as pool:
            list(pool.map(self._wait, servers))
        return servers

    def get(self, spec: ServerSpec) -> LiveServer:
        return self.start([spec])[0]

    @staticmethod
    def _wait(server: LiveServer) -> None:
        running = lambda: server.proc.poll() is None  # noqa: E731
        why = wait_answering(f"{server.url}/ping", running, START_TIMEOUT)
        log = server.log.read_text(errors="replace")
        assert not why, f"{server.spec.name} {why}: {log[-3000:]}"

    def stop(self, spec: ServerSpec) -> None:
        """Stop one server (no-op when it is not running)."""
        server = self.servers.pop(spec, None)
        if server is not None:
            stop_session(server.proc)

    def close(self) -> None:
        for server in self.servers.values():
            stop_session(server.proc)
        self.servers.clear()


@pytest.fixture(scope="module")
def serve_pool(tmp_path_factory) -> Iterator[ServerPool]:
    """Servers started on demand for this module, all stopped when it ends (even on errors)."""
    pool = ServerPool(tmp_path_factory.mktemp("servers"))
    try:
        yield pool
    finally:
        pool.close()


# ------------------------------------------------------------------------------ truth
_TRUTH = r"""
import glob, json, math, os, sys, tempfile, zipfile
import pandas as pd
csv, module, pipeline, out, n_rows = sys.argv[1:6]
wheel = glob.glob(os.path.join(pipeline, module + "-*.whl"))[0]
code = tempfile.mkdtemp(prefix="truth-")
zipfile.ZipFile(wheel).extractall(code)
sys.path.insert(0, code)
os.chdir(os.environ["WORKDIR"])
import importlib
scorer = importlib.import_module(module).Scorer()
cols = list(scorer.get_column_names())
frame = pd.read_csv(csv)[cols]
text = pd.read_csv(csv, dtype=str, keep_default_na=False)[cols]
def plain(v):
    if hasattr(v, "item"):
        v = v.item()
    return None if isinstance(v, float) and math.isnan(v) else v
rows = [[None if v == "" else v for v in r] for r in text.head(int(n_rows)).values.tolist()]
labels = scorer.get_target_labels()
truth = {
    "columns": cols,
    "transformed": list(scorer.get_transformed_column_names()),
    "labels": None if labels is None else [plain(v) for v in labels],
    "records": [{c: plain(v) for c, v in zip(cols, r)} for r in frame.values.tolist()],
    "text_rows": rows,
    "score": [[float(x) for x in scorer.score(r)] for r in rows],
    "score_contribs": [[float(x) for x in scorer.score(r, False, True)] for r in rows[:5]],
}
for name, kwargs in (("batch", {}), ("batch_contribs", {"pred_contribs": True}),
                     ("batch_margin", {"output_margin": True})):
    res = scorer.score_batch(frame, **kwargs)
    truth[name] = {"columns": [str(c) for c in res.columns], "values": res.values.tolist()}
with open(out, "w") as f:
    json.dump(truth, f)
"""


def get_scorer_truth(model: LoggedDaiModel) -> Dict[str, Any]:
    """The scorer's own answers on the model's sample csv (see the module docstring)."""
    csv = model.build.sample_input_csv
    digest = hashlib.sha256(csv.read_bytes())
    pipeline = model.local_dir / "artifacts" / "scoring-pipeline"
    digest.update(json.dumps([str(model.local_dir), model.build.module_name, _TRUTH]).encode())
    out = CACHE / "truth" / f"{digest.hexdigest()[:16]}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out) + ".lock"):
        if not out.is_file():
            workdir = out.with_suffix(".work")
            workdir.mkdir(exist_ok=True)
            env = {**run_env(model.license_env), "WORKDIR": str(workdir)}
            tmp = out.with_suffix(".part")
            args = [str(csv), model.build.module_name, str(pipeline), str(tmp), str(TRUTH_ROWS)]
            proc = subprocess.run(
                [str(model_python(model)), "-c", _TRUTH, *args],
                cwd=str(workdir),
                env=env,
                capture_output=True,
                text=True,
                timeout=600,
            )
            assert proc.returncode == 0, proc.stderr[-3000:]
            tmp.replace(out)
    return json.loads(out.read_text())


@pytest.fixture(scope="session")
def scorer_truth() -> Callable[[LoggedDaiModel], Dict[str, Any]]:
    """Factory: ``scorer_truth(model)`` → the scorer's own answers (cached)."""
    cache: Dict[str, Dict[str, Any]] = {}

    def _get(model: LoggedDaiModel) -> Dict[str, Any]:
        key = str(model.local_dir)
        if key not in cache:
            cache[key] = get_scorer_truth(model)
        return cache[key]

    return _get
