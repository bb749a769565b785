"""The serving targets, side by side: dai-mlflow's server vs plain ``mlflow models serve``.

    venvs/launcher/bin/python benchmarks/serve_targets.py [--lines 1.10,2] [--seconds 10]
    make bench-serve            # both DAI lines

For each DAI line, the stand-in model logged by the tests' fixture (cached under
``tests/.cache``) is served twice from this (launcher) interpreter, offline, on loopback:
``python -m dai_mlflow.serve -m URI`` (the model's own server, default workers = cores) and
plain ``mlflow models serve -m URI --env-manager uv`` (MLflow's server with its defaults). Then,
one server at a time, a load client in this process (asyncio, one keep-alive connection per
client, pre-encoded bodies, every answer parsed and checked) runs for ``--seconds`` each:

* single rows on ``/invocations`` with 32 clients (req/s, p50, p99), both servers;
* single rows on ``/rpc`` (JSON-RPC ``score``) with 32 clients, dai-mlflow's server;
* 1000-row batches on ``/invocations`` (both) and ``/rpc`` ``score_batch`` with 4 clients (rows/s);
* one client, one row at a time (p50), both servers; beside it the scorer's own ``score_batch``
  of one row, timed in the model env (the floor: "scorer call + 1.5 ms").

The client shares the machine's cores with the servers, as the targets ask. Any failed answer
is reported; one from the model's own server makes the exit code 1. Nothing is asserted on the
figures.

``--profile DIR`` samples the model's server (every process) with py-spy (``uvx py-spy``, fetched
from the package index on first use) during each of its phases, writes the stacks to DIR and
prints where the CPU time goes, by layer and by function.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pandas as pd

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LAUNCHER_BIN = REPO_ROOT / "venvs" / "launcher" / "bin"
START_TIMEOUT = 900.0
PROBLEM = "binary"
CLIENTS = 32
BATCH_CLIENTS = 4
BATCH_ROWS = 1000
_SCORER_TIMING = r"""
import json, statistics, sys, time
import mlflow.pyfunc
import pandas as pd
model = mlflow.pyfunc.load_model(sys.argv[1], suppress_warnings=True)
frame = pd.read_csv(sys.argv[2]).head(1)
model.predict(frame.astype({c: "float64" for c in frame.select_dtypes("integer").columns}))
from dai_mlflow.model.pyfunc import get_scorer
scorer = get_scorer(model.metadata.metadata["scorer_module"])
columns = list(scorer.get_column_names())
one = model.unwrap_python_model()
frame = frame[columns]
from dai_mlflow.model.pyfunc import prepare_input
ready = prepare_input(frame, columns, dict(
    (n, t) for n, t in (model.metadata.metadata.get("input_columns") or [])))
times = []
for _ in range(300):
    t = time.perf_counter(); scorer.score_batch(ready); times.append(time.perf_counter() - t)
print(json.dumps({"score_batch_1_row_ms": 1000 * statistics.median(times)}))
"""


class Result:
    """One measured phase."""

    def __init__(self, latencies: List[float], rows: int, seconds: float, errors: List[str]):
        self.latencies = sorted(latencies)
        self.rows = rows
        self.seconds = seconds
        self.errors = errors

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return 1000 * self.latencies[min(len(self.latencies) - 1, int(q * len(self.latencies)))]

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds


def _request(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _client(
    port: int,
    requests: List[Tuple[bytes, int, Callable[[bytes], bool]]],
    deadline: float,
    latencies: List[float],
    counted: List[int],
    errors: List[str],
    offset: int,
) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        errors.append(f"connect: {e}")
        return
    i = offset
    try:
        while time.perf_counter() < deadline:
            raw, rows, check = requests[i % len(requests)]
            i += 1
            started = time.perf_counter()
            writer.write(raw)
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            if not head.startswith(b"HTTP/1.1 200") or not check(body):
                errors.append(head.split(b"\r\n", 1)[0].decode() + " " + body[:200].decode())
            else:
                counted.append(rows)
    except (OSError, asyncio.IncompleteReadError) as e:
        errors.append(f"connection: {type(e).__name__}: {e}")
    finally:
        writer.close()


def run_load(
    url: str,
    requests: List[Tuple[bytes, int, Callable[[bytes], bool]]],
    clients: int,
    seconds: float,
) -> Result:
    """``clients`` keep-alive connections sending ``requests`` in turn for ``seconds``."""
    port = int(url.rsplit(":", 1)[1])

    async def main() -> Result:
        warm: List[float] = []
        await _client(port, requests, time.perf_counter() + 0.5, warm, [], [], 0)
        latencies: List[float] = []
        counted: List[int] = []
        errors: List[str] = []
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(
                _client(port, requests, deadline, latencies, counted, errors, k)
                for k in range(clients)
            )
        )
        return Result(latencies, sum(counted), time.perf_counter() - started, errors)

    return asyncio.run(main())


def _invocations(rows: List[Dict[str, Any]], columns: List[str]) -> Tuple[bytes, int, Any]:
    body = json.dumps({"dataframe_split": {"columns": columns, "data": [[r[c] for c in columns]
                                                                      for r in rows]}})  # fmt: skip

    def check(answer: bytes) -> bool:
        return len(json.loads(answer)["predictions"]) == len(rows)

    return _request("/invocations", body.encode()), len(rows), check


def _rpc(rows: List[Dict[str, Any]]) -> Tuple[bytes, int, Any]:
    if len(rows) == 1:
        body = {"id": 1, "method": "score", "params": {"row": rows[0]}}
    else:
        body = {"id": 1, "method": "score_batch", "params": {"rows": rows}}

    def check(answer: bytes) -> bool:
        result = json.loads(answer).get("result")
        return isinstance(result, list) and (len(rows) == 1 or len(result) == len(rows))

    return _request("/rpc", json.dumps(body).encode()), len(rows), check


def _start(cmd: List[str], env: Dict[str, str], log: Path) -> Tuple[str, Any]:
    from dai_mlflow.envs.processes import free_port, last_log_line, start_logged, wait_answering

    port = free_port()
    cmd = [c.replace("{PORT}", str(port)) for c in cmd]
    proc = start_logged(cmd, env, log, cwd=log.parent)
    url = f"http://127.0.0.1:{port}"
    why = wait_answering(f"{url}/ping", lambda: proc.poll() is None, START_TIMEOUT)
    if why:
        raise SystemExit(f"Error: {' '.join(cmd[:4])} {why}: {last_log_line(log)}")
    return url, proc


def measure_line(
    line: str, seconds: float, folder: Path, profile: Optional[Path] = None
) -> Dict[str, Any]:
    """Both servers of one DAI line, every phase; figures and errors."""
    from dai_mlflow.envs.model_env import model_python_version
    from dai_mlflow.envs.processes import stop_session
    from dai_mlflow.serve.server import offline_build_env, prepare_model_env
    from tests.fixtures_model import get_logged_model, model_python, run_env

    model = get_logged_model(line, PROBLEM)
    env = run_env({**model.license_env, "MLFLOW_TRACKING_URI": model.tracking_uri})
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(offline_build_env(model_python_version(model.local_dir), env["PATH"]))
    os.environ.update({k: env[k] for k in ("MLFLOW_ENV_ROOT", "PATH", "UV_PYTHON_DOWNLOADS")})
    prepare_model_env(model.local_dir, "uv")  # restored once, before both servers start
    frame = pd.read_csv(model.build.sample_input_csv)
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    columns = list(frame.columns)
    batch = (records * (BATCH_ROWS // len(records) + 1))[:BATCH_ROWS]
    singles_inv = [_invocations([r], columns) for r in records]
    singles_rpc = [_rpc([r]) for r in records]
    python = model_python(model)
    timing = subprocess.run(
        [str(python), "-c", _SCORER_TIMING, str(model.local_dir),
         str(model.build.sample_input_csv)],
        env={**run_env(model.license_env), "PYTHONPATH": str(model.local_dir / "code")},
        cwd=str(folder), capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    scorer_ms = json.loads(timing.stdout.strip().splitlines()[-1])["score_batch_1_row_ms"]

    figures: Dict[str, Any] = {"line": line, "scorer_ms": scorer_ms, "errors": []}
    ours_cmd = [str(LAUNCHER_BIN / "python"), "-m", "dai_mlflow.serve", "-m", model.model_uri,
                "-p", "{PORT}", "--env-manager", "uv"]  # fmt: skip
    plain_cmd = [str(LAUNCHER_BIN / "mlflow"), "models", "serve", "-m", model.model_uri,
                 "-p", "{PORT}", "--env-manager", "uv"]  # fmt: skip
    for name, cmd in (("ours", ours_cmd), ("plain", plain_cmd)):
        url, proc = _start(cmd, env, folder / f"{line}-{name}.log")
        loads = {
            "inv_1": (singles_inv, CLIENTS),
            "inv_1000": ([_invocations(batch, columns)], BATCH_CLIENTS),
            "one_client": (singles_inv, 1),
        }
        if name == "ours":
            loads["rpc_1"] = (singles_rpc, CLIENTS)
            loads["rpc_1000"] = ([_rpc(batch)], BATCH_CLIENTS)
        phases = {}
        try:
            for phase, (requests, clients) in loads.items():
                sampler = None
                if profile is not None and name == "ours":
                    sampler = start_profile(proc.pid, profile / f"{line}-{phase}.txt", seconds)
                phases[phase] = run_load(url, requests, clients, seconds)
                if sampler is not None:
                    sampler.wait(timeout=120)
                    figures.setdefault("profiles", {})[phase] = profile / f"{line}-{phase}.txt"
        finally:
            stop_session(proc)
        figures[name] = phases
        for phase, result in phases.items():
            figures["errors"] += [f"{name} {phase}: {e}" for e in result.errors[:3]]
    return figures


# ------------------------------------------------------------------------------ profile
# Layers a sampled frame belongs to, by its module path as py-spy shows it ("json/encoder.py"),
# the first match wins; the rest (the scorer, its libraries, the interpreter) is "other".
LAYERS = (
    # py-spy --nonblocking cannot tell a thread blocked in C from a busy one: these are waits.
    ("waiting (select, condition)", ("select (selectors.py", "wait (threading.py")),
    ("json (stdlib)", ("(json/",)),
    ("HTTP + event loop", ("serving/http.py", "(asyncio/", "(selectors.py", "(socket.py")),
    ("batching + threads", ("serving/batching.py", "(threading.py", "(concurrent/")),
    ("MLflow (schema, pyfunc)", ("(mlflow/",)),
    ("pandas + numpy", ("(pandas/", "(numpy/")),
    ("dai-mlflow (app, pyfunc)", ("(dai_mlflow/",)),
)
_LINE = re.compile(r":\d+\)$")


def start_profile(pid: int, out: Path, seconds: float) -> subprocess.Popen:
    """py-spy sampling ``pid`` and its children for ``seconds`` (collapsed stacks to ``out``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(LAUNCHER_BIN / "uvx"), "py-spy", "record", "--pid", str(pid), "--subprocesses",
           "--nonblocking", "--format", "raw", "--rate", "250", "--duration",
           str(max(1, int(seconds))), "--output", str(out)]  # fmt: skip
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _layer(frame: str) -> str:
    for name, marks in LAYERS:
        if any(mark in frame for mark in marks):
            return name
    return "other (the scorer, its libraries, the interpreter)"


# Steps of a request in a worker, by the functions whose samples (children included) they own.
STEPS = (
    ("HTTP read + parse", ("data_received",)),
    ("body JSON parsed", ("fast_item", "rpc_item")),
    ("frame built", ("_direct_frame", "_rows_frame")),
    ("the model's predict", ("predict",)),
    ("  of which input prepared", ("prepare_input",)),
    ("answer encoded", ("prediction_records", "done")),
    ("HTTP write + wake-ups", ("finish", "_write_to_self")),
)


def summarize_profile(path: Path, top: int = 8) -> List[str]:
    """Where the sampled CPU time of the server's workers went: by step of a request, by layer
    (of the innermost frame) and the functions with the most samples of their own. Samples of
    the supervisor and the launcher (idle, waiting on their children) are left out."""
    if not path.is_file():
        return [f"  (no profile: {path} was not written; is py-spy allowed to trace here?)"]
    stacks: List[Tuple[List[str], int, int]] = []  # frames, samples, process depth
    for raw in path.read_text().splitlines():
        stack, _, count = raw.rpartition(" ")
        if stack and count.isdigit():
            frames = stack.split(";")
            depth = sum(f.startswith("process ") for f in frames)
            stacks.append((frames, int(count), depth))
    deepest = max((depth for _, _, depth in stacks), default=0)
    layers: Dict[str, int] = {}
    functions: Dict[str, int] = {}
    steps: Dict[str, int] = {}
    total = 0
    for frames, n, depth in stacks:
        if depth < deepest:
            continue
        total += n
        leaf = _LINE.sub(")", frames[-1])
        layer = _layer(leaf)
        layers[layer] = layers.get(layer, 0) + n
        functions[leaf] = functions.get(leaf, 0) + n
        names = {f.split(" (", 1)[0].rsplit(".", 1)[-1] for f in frames}
        for step, owners in STEPS:
            if names.intersection(owners):
                steps[step] = steps.get(step, 0) + n
    if not total:
        return ["  (no samples)"]

    def pct(n: int) -> str:
        return f"{100 * n / total:.0f}%"

    lines = ["  by step: " + ", ".join(f"{k.strip()} {pct(steps.get(k, 0))}" for k, _ in STEPS)]
    ranked = sorted(layers.items(), key=lambda kv: -kv[1])
    lines.append("  by layer: " + ", ".join(f"{k} {pct(v)}" for k, v in ranked))
    for leaf, n in sorted(functions.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"    {100 * n / total:5.1f}%  {leaf[:110]}")
    return lines


def print_table(figures: Dict[str, Any]) -> None:
    ours, plain = figures["ours"], figures["plain"]
    scorer = figures["scorer_ms"]

    def single(r: Result) -> str:
        return f"{r.rps:,.0f} req/s, p50 {r.pct(0.5):.1f} ms, p99 {r.pct(0.99):.1f} ms"

    ratio = ours["inv_1"].rps / max(plain["inv_1"].rps, 1e-9)
    rows = [
        ("single rows, /invocations, 32 clients", single(ours["inv_1"]), single(plain["inv_1"]),
         f">= 2,000 req/s, p99 <= 50 ms, >= 10x plain (here {ratio:.1f}x)"),
        ("single rows, /rpc, 32 clients", single(ours["rpc_1"]), "-", ">= 2,000 req/s"),
        ("1000-row batches, /invocations, 4 clients", f"{ours['inv_1000'].rows_per_s:,.0f} rows/s",
         f"{plain['inv_1000'].rows_per_s:,.0f} rows/s", ">= 250 k rows/s"),
        ("1000-row batches, /rpc, 4 clients", f"{ours['rpc_1000'].rows_per_s:,.0f} rows/s", "-",
         ">= 250 k rows/s"),
        ("one client, one row at a time (p50)", f"{ours['one_client'].pct(0.5):.2f} ms",
         f"{plain['one_client'].pct(0.5):.2f} ms",
         f"<= scorer call + 1.5 ms = {scorer + 1.5:.2f} ms (scorer call {scorer:.2f} ms)"),
    ]  # fmt: skip
    print(f"\nDAI {figures['line']} ({PROBLEM} stand-in), {os.cpu_count()} cores, client included")
    print("| | dai-mlflow server | plain mlflow models serve --env-manager uv | target |")
    print("|---|---|---|---|")
    for label, a, b, target in rows:
        print(f"| {label} | {a} | {b} | {target} |")
    for error in figures["errors"][:10]:
        print(f"  error: {error}")
    for phase, path in figures.get("profiles", {}).items():
        print(f"\nprofile of the model's server, {phase} ({path}):")
        print("\n".join(summarize_profile(path)))


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", default="1.10,2", help="DAI lines, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="sample the model's server with py-spy into DIR"
    )
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="dai-mlflow-serve-targets-"))
    print(f"server logs in {folder}", flush=True)
    failed = False
    for line in [x.strip() for x in args.lines.split(",") if x.strip()]:
        figures = measure_line(line, args.seconds, folder, args.profile)
        print_table(figures)
        # Plain MLflow's resets under load are reported, not counted: they are its figures.
        failed = failed or any(e.startswith("ours ") for e in figures["errors"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
