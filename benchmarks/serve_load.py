"""Bounded load on a served DAI model: ``/invocations`` (mlflow models serve) and ``/rpc`` (DAI).

    venvs/launcher/bin/python benchmarks/serve_load.py [--dai-version 1.10] [--problem binary]
        [--clients 8] [--requests 400] [--batch-requests 40] [--batch-rows 1000]
        [--max-seconds 60] [--env-manager uv]

By default the model is the DAI-shaped stand-in logged by the tests' fixture (cached under
``tests/.cache``), with its stand-in license; ``--model-uri URI --sample CSV`` loads any logged
model instead (license from your environment). Two servers are started on free loopback ports
from this (launcher) interpreter, offline, and stopped at the end:
``python -m dai_mlflow.serve --env-manager uv`` (the model env's own ``mlflow models serve``) and
``python -m dai_mlflow.serve.rpc`` (DAI's JSON-RPC protocol). ``--invocations-url``/``--rpc-url``
aim at servers that already run instead.

For each endpoint, ``--clients`` threads (one keep-alive connection each) send requests until
the fixed count is done or ``--max-seconds`` pass, after a warm-up request:

1. single row: ``--requests`` one-row requests (a ``dataframe_split`` body; JSON-RPC ``score``
   with the row as an object): p50 / p99 latency as the client sees it (queueing included) and
   requests/s;
2. batch: ``--batch-requests`` requests of ``--batch-rows`` rows (``dataframe_split``;
   ``score_batch``): rows/s and p50 latency.

Every response is checked (HTTP 200, no JSON-RPC error, one answer per row); any error is
reported and makes the exit code 1. Nothing is timed-asserted: this prints figures.

Against a local deployment (``mlflow run . -e deploy``), ``--url http://127.0.0.1:5050`` aims
both endpoints at its stable port; each phase then also counts which model version answered
(the proxy's ``X-Dai-Mlflow-Model-Version`` header), so a deploy run during the load shows the
switch-over: the old version's answers, then the new one's, and no error in between.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pandas as pd
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LAUNCHER_PYTHON = REPO_ROOT / "venvs" / "launcher" / "bin" / "python"
START_TIMEOUT = 900.0


@dataclass
class Phase:
    """Outcome of one load phase."""

    name: str
    latencies: List[float] = field(default_factory=list)
    rows: int = 0
    errors: List[str] = field(default_factory=list)
    seconds: float = 0.0
    versions: Dict[str, int] = field(default_factory=dict)  # answers per model version header

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        index = min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))
        return ordered[index]


def _frame_rows(frame: pd.DataFrame) -> List[Dict[str, Any]]:
    """JSON-ready records: NaN as null (JSON has no NaN)."""
    clean = frame.astype(object).where(frame.notna(), None)
    return clean.to_dict(orient="records")


def _split(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    columns = list(rows[0])
    return {
        "dataframe_split": {"columns": columns, "data": [[r[c] for c in columns] for r in rows]}
    }


VERSION_HEADER = "X-Dai-Mlflow-Model-Version"
Sender = Callable[[requests.Session, List[Dict[str, Any]]], Tuple[str, str]]


def _invocations(url: str) -> Sender:
    def send(session: requests.Session, rows: List[Dict[str, Any]]) -> Tuple[str, str]:
        resp = session.post(f"{url}/invocations", json=_split(rows), timeout=120)
        version = resp.headers.get(VERSION_HEADER, "")
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}: {resp.text[:200]}", version
        if len(resp.json()["predictions"]) != len(rows):
            return "wrong number of predictions", version
        return "", version

    return send


def _rpc(url: str) -> Sender:
    counter = iter(range(1, 1 << 62))
    lock = threading.Lock()

    def send(session: requests.Session, rows: List[Dict[str, Any]]) -> Tuple[str, str]:
        with lock:
            request_id = next(counter)
        if len(rows) == 1:
            body = {"id": request_id, "method": "score", "params": {"row": rows[0]}}
        else:
            body = {"id": request_id, "method": "score_batch", "params": {"rows": rows}}
        resp = session.post(f"{url}/rpc", json=body, timeout=120)
        version = resp.headers.get(VERSION_HEADER, "")
        if resp.status_code != 200:
            return f"HTTP {resp.status_code}: {resp.text[:200]}", version
        answer = resp.json()
        if "error" in answer:
            return f"JSON-RPC error: {answer['error']['message'][:200]}", version
        if len(rows) > 1 and len(answer["result"]) != len(rows):
            return "wrong number of results", version
        return "", version

    return send


def run_phase(
    name: str,
    send: Sender,
    batches: List[List[Dict[str, Any]]],
    count: int,
    clients: int,
    max_seconds: float,
) -> Phase:
    """``count`` requests (cycling ``batches``) from ``clients`` threads, within ``max_seconds``."""
    phase = Phase(name)
    local = threading.local()
    lock = threading.Lock()
    deadline = time.monotonic() + max_seconds
    send(requests.Session(), batches[0])  # warm-up (first call builds lazily-built scorers)

    def one(i: int) -> None:
        if time.monotonic() > deadline:
            return
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        rows = batches[i % len(batches)]
        started = time.perf_counter()
        version = ""
        try:
            error, version = send(session, rows)
        except requests.RequestException as e:
            error = f"{type(e).__name__}: {e}"
        elapsed = time.perf_counter() - started
        with lock:
            if version:
                phase.versions[version] = phase.versions.get(version, 0) + 1
            if error:
                phase.errors.append(error)
            else:
                phase.latencies.append(elapsed)
                phase.rows += len(rows)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(one, range(count)))
    phase.seconds = time.perf_counter() - started
    return phase


def _start_servers(
    model_uri: str, env: Dict[str, str], env_manager: str, folder: Path
) -> Tuple[str, str, List[Any]]:
    from dai_mlflow.envs.processes import free_port, last_log_line, start_logged, wait_answering

    procs = []
    serve_port, rpc_port = free_port(), free_port()
    serve_cmd = [str(LAUNCHER_PYTHON), "-m", "dai_mlflow.serve", "-m", model_uri]
    serve_cmd += ["-p", str(serve_port), "--env-manager", env_manager]
    rpc_cmd = [str(LAUNCHER_PYTHON), "-m", "dai_mlflow.serve.rpc", "--model-uri", model_uri]
    rpc_cmd += ["--port", str(rpc_port), "--env-manager", env_manager]
    urls = (f"http://127.0.0.1:{serve_port}", f"http://127.0.0.1:{rpc_port}")
    for cmd, name in ((serve_cmd, "serve"), (rpc_cmd, "rpc")):
        procs.append(start_logged(cmd, env, folder / f"{name}.log", cwd=folder))
    for url, proc, name in zip(urls, procs, ("serve", "rpc")):
        why = wait_answering(f"{url}/ping", lambda p=proc: p.poll() is None, START_TIMEOUT)
        if why:
            tail = last_log_line(folder / f"{name}.log")
            raise SystemExit(f"Error: the {name} server {why}: {tail}")
    return urls[0], urls[1], procs


def _model(args: argparse.Namespace) -> Tuple[str, Path, Dict[str, str]]:
    """Model URI (a local folder), sample csv, and the server env (license, caches)."""
    if args.model_uri:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO_ROOT)
        return args.model_uri, Path(args.sample), env
    from dai_mlflow.envs.model_env import model_python_version
    from dai_mlflow.serve.server import offline_build_env
    from tests.fixtures_model import get_logged_model, run_env

    model = get_logged_model(args.dai_version, args.problem)
    env = run_env(model.license_env)
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(offline_build_env(model_python_version(model.local_dir), env["PATH"]))
    return str(model.local_dir), model.build.sample_input_csv, env


def _report(phases: List[Phase], clients: int) -> int:
    print(
        f"{'phase':<28} {'requests':>8} {'rows':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'req/s':>8} {'rows/s':>10} {'errors':>6}"
    )
    failed = 0
    for p in phases:
        n = len(p.latencies)
        print(
            f"{p.name:<28} {n:>8} {p.rows:>8} {1000 * p.percentile(0.5):>8.1f} "
            f"{1000 * p.percentile(0.99):>8.1f} {n / p.seconds:>8.1f} "
            f"{p.rows / p.seconds:>10.0f} {len(p.errors):>6}"
        )
        if p.versions:
            counts = ", ".join(f"v{v} {n}" for v, n in sorted(p.versions.items()))
            print(f"    answered by: {counts}")
        for error in sorted(set(p.errors))[:3]:
            print(f"    error: {error}")
        failed += len(p.errors)
    print(f"({clients} concurrent clients, keep-alive; latency as the client sees it)")
    return 1 if failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dai-version", default="1.10", choices=["1.10", "2"])
    parser.add_argument(
        "--problem", default="binary", choices=["regression", "binary", "multiclass"]
    )
    parser.add_argument("--model-uri", help="a logged model (with --sample); default: stand-in")
    parser.add_argument("--sample", help="csv of input rows for --model-uri")
    parser.add_argument(
        "--url", help="a local deployment's stable endpoint: both --invocations-url and --rpc-url"
    )
    parser.add_argument("--invocations-url", help="a running mlflow models serve (base URL)")
    parser.add_argument("--rpc-url", help="a running dai_mlflow.serve.rpc server (base URL)")
    parser.add_argument("--env-manager", default="uv", choices=["uv", "virtualenv"])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=400, help="single-row requests")
    parser.add_argument("--batch-requests", type=int, default=40)
    parser.add_argument("--batch-rows", type=int, default=1000)
    parser.add_argument("--max-seconds", type=float, default=60.0, help="cap per phase")
    args = parser.parse_args(argv)
    if args.model_uri and not args.sample:
        parser.error("--model-uri needs --sample CSV")
    if args.url:
        args.invocations_url = args.invocations_url or args.url
        args.rpc_url = args.rpc_url or args.url

    model_uri, sample, env = _model(args)
    base = pd.read_csv(sample)
    singles = [[r] for r in _frame_rows(base)]
    repeated = pd.concat([base] * (args.batch_rows // len(base) + 1), ignore_index=True)
    batch = _frame_rows(repeated.head(args.batch_rows))

    procs: List[Any] = []
    folder = Path(tempfile.mkdtemp(prefix="dai-mlflow-serve-load-"))
    try:
        serve_url, rpc_url = args.invocations_url, args.rpc_url
        if not (serve_url and rpc_url):
            print(f"starting servers for {model_uri} (logs in {folder}) ...", flush=True)
            started = time.monotonic()
            serve_url, rpc_url, procs = _start_servers(model_uri, env, args.env_manager, folder)
            print(f"servers up in {time.monotonic() - started:.1f}s", flush=True)
        endpoints = (("/invocations", _invocations(serve_url)), ("/rpc", _rpc(rpc_url)))
        phases = []
        for label, send in endpoints:
            phases.append(
                run_phase(
                    f"{label} 1 row", send, singles, args.requests, args.clients, args.max_seconds
                )
            )
            phases.append(
                run_phase(
                    f"{label} {args.batch_rows} rows",
                    send,
                    [batch],
                    args.batch_requests,
                    args.clients,
                    args.max_seconds,
                )
            )
        print(json.dumps({"model": model_uri, "dai_version": args.dai_version}))
        return _report(phases, args.clients)
    finally:
        from dai_mlflow.envs.processes import stop_session

        for proc in procs:
            stop_session(proc)


if __name__ == "__main__":
    sys.exit(main())
