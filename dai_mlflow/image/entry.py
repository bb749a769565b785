"""The serving image's entry point: one port for ``/invocations``, ``/rpc``, ``/ping``, ...

Copied into the image as ``/opt/dai-mlflow/bin/entry.py``, run by its model env as the non-root
user. It first checks the license and the model (``MODEL_PATH``, else ``/model``, else the baked
one, else ``MODEL_URI``), its DAI version and Python (one ``Error:`` line, exit 2); then it runs
the model's own server, or for older models MLflow's and the JSON-RPC server behind a front.
``--check`` (run by ``docker build``) imports what serving needs. Stdlib only; Python 3.8-safe.
See docs/image.md, "Running it".
Over 400 lines: one file, since it runs alone in the image (no package beside it).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path("/opt/dai-mlflow")
BAKED_MODEL = ROOT / "model"
MOUNTED_MODEL = Path("/model")
RPC_SCRIPT = ROOT / "bin" / "dai_mlflow_rpc.py"
# The server each model carries (its code/), started by the hooks wheel installed in the env.
MODEL_SERVER = "dai_mlflow_model_hooks.serve"
SCRATCH = Path(os.environ.get("DAI_MLFLOW_SCRATCH", "/tmp/dai-mlflow"))
IMAGE_DAI_VERSION_ENV = "DAI_MLFLOW_IMAGE_DAI_VERSION"
KEY_ENV = "DRIVERLESS_AI_LICENSE_KEY"
FILE_ENV = "DRIVERLESS_AI_LICENSE_FILE"
START_TIMEOUT = float(os.environ.get("DAI_MLFLOW_START_TIMEOUT", "300"))
STOP_GRACE = 20.0
# Request headers passed on to a server, and answer headers passed back.
_FORWARDED = ("content-type", "accept", "content-encoding")
_RETURNED = ("content-type", "content-encoding")


class EntryError(Exception):
    """A check failed; the message is the one line the container prints."""


def say(message: str) -> None:
    print(f"[dai-mlflow] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ checks
def check_license(environ: Dict[str, str]) -> str:
    """Where the license comes from; it is never copied or printed."""
    if environ.get(KEY_ENV, "").strip():
        return f"${KEY_ENV}"
    path = environ.get(FILE_ENV, "").strip()
    if path:
        if not os.access(path, os.R_OK) or not Path(path).is_file():
            raise EntryError(
                f"{FILE_ENV}={path} is not a readable file in the container; mount the license "
                f"there (docker run -v /path/to/license.sig:{path}:ro) or set {KEY_ENV}"
            )
        return path
    home = Path(environ.get("HOME") or "/nonexistent") / ".driverlessai" / "license.sig"
    if home.is_file():
        return str(home)
    raise EntryError(
        f"no Driverless AI license found: pass it with docker run -e {KEY_ENV}=<key>, or mount "
        f"the license file and set {FILE_ENV}=<its path in the container>"
    )


def find_model(environ: Dict[str, str]) -> Path:
    """The model folder to serve (see the module docstring)."""
    explicit = environ.get("MODEL_PATH", "").strip()
    if explicit:
        if not (Path(explicit) / "MLmodel").is_file():
            raise EntryError(
                f"MODEL_PATH={explicit} holds no MLmodel; mount the model folder there"
            )
        return Path(explicit)
    if (MOUNTED_MODEL / "MLmodel").is_file():
        return MOUNTED_MODEL
    if (BAKED_MODEL / "MLmodel").is_file():
        return BAKED_MODEL
    uri = environ.get("MODEL_URI", "").strip()
    if uri:
        return download_model(uri)
    raise EntryError(
        f"no model to serve: mount one (docker run -v /path/to/model:{MOUNTED_MODEL}:ro), set "
        "MODEL_URI (with MLFLOW_TRACKING_URI), or build the image with --bake-model"
    )


def download_model(uri: str) -> Path:
    """Download ``uri`` with the env's MLflow into the scratch folder."""
    import mlflow.artifacts

    dest = SCRATCH / "downloaded-model"
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest))
    except Exception as e:
        text = " ".join(str(e).split())[:300]
        raise EntryError(f"cannot download MODEL_URI={uri}: {type(e).__name__}: {text}") from e
    return Path(local)


def model_facts(model: Path) -> Tuple[str, str]:
    """(DAI version, Python version) written in the model's ``MLmodel`` and ``python_env.yaml``."""
    import yaml

    try:
        meta = yaml.safe_load((model / "MLmodel").read_text()) or {}
        env_file = model / "python_env.yaml"
        python = str((yaml.safe_load(env_file.read_text()) or {}).get("python", ""))
    except OSError as e:
        raise EntryError(
            f"cannot read the model at {model} as uid {os.getuid()} ({e.strerror}): make it "
            "readable by all (chmod -R a+rX), or run the container with --user <owner uid>"
        ) from e
    return str((meta.get("metadata") or {}).get("dai_version", "unknown")), python


def check_model(model: Path, image_dai: str) -> None:
    """Refuse a model of another DAI version or Python, or one this user cannot read."""
    model_dai, python = model_facts(model)
    if image_dai and model_dai != image_dai:
        raise EntryError(
            f"the model at {model} is for Driverless AI {model_dai}, this image serves Driverless "
            f"AI {image_dai}: build an image from this model (dai-mlflow image build)"
        )
    here = ".".join(str(v) for v in sys.version_info[:2])
    if python and ".".join(python.split(".")[:2]) != here:
        raise EntryError(
            f"the model at {model} needs Python {python}, this image has Python {here}: build an "
            "image from this model (dai-mlflow image build)"
        )
    unreadable = [str(p) for p in model.rglob("*") if not os.access(str(p), os.R_OK)]
    unreadable += [str(model)] if not os.access(str(model), os.R_OK | os.X_OK) else []
    if unreadable:
        raise EntryError(
            f"{unreadable[0]} is not readable by uid {os.getuid()}: make the model readable by all "
            "(chmod -R a+rX), or run the container with --user <owner uid>"
        )


# ------------------------------------------------------------------------------ servers
def carries_server(model: Path) -> bool:
    """True when the model carries dai-mlflow's own server and the env can start it (models
    logged since it exists); older models are served by MLflow's server and the RPC script."""
    import importlib.util

    ours = model / "code" / "dai_mlflow" / "model" / "serving" / "__init__.py"
    return ours.is_file() and importlib.util.find_spec(MODEL_SERVER) is not None


def free_port() -> int:
    """A loopback port free now (with --network host the container shares the host's)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_environ(environ: Dict[str, str]) -> Dict[str, str]:
    """The servers' environment: every writable path under the scratch folder."""
    env = dict(environ)
    home = SCRATCH / "home"
    for folder in (home, SCRATCH / "experiments"):
        folder.mkdir(parents=True, exist_ok=True)
    env["HOME"] = str(home)
    env["DAI_MLFLOW_EXPERIMENT_CACHE"] = str(SCRATCH / "experiments")
    env["DAI_MLFLOW_ENV_ROOT"] = str(SCRATCH / "envs")
    # Loading a model opens the tracking store (tracing); the model is local, so any store does.
    env["MLFLOW_TRACKING_URI"] = (SCRATCH / "mlruns").as_uri()
    env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("TMPDIR", "/tmp")
    return env


def server_commands(model: Path, ports: Dict[str, int], workers: int) -> Dict[str, List[str]]:
    """The command of each backend server (name -> argv), run with this interpreter."""
    python = sys.executable
    invocations = [python, "-m", "mlflow", "models", "serve", "-m", str(model), "-h",
                   "127.0.0.1", "-p", str(ports["invocations"]), "--env-manager", "local",
                   "-w", str(workers)]  # fmt: skip
    rpc = [python, str(RPC_SCRIPT), "--model-uri", str(model), "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(ports["rpc"])]  # fmt: skip
    return {"invocations": invocations, "rpc": rpc}


class Backends:
    """The model's servers: started, watched, asked whether they answer, stopped."""

    def __init__(self, commands: Dict[str, List[str]], ports: Dict[str, int], env: Dict[str, str]):
        self.ports = ports
        self.procs: Dict[str, subprocess.Popen] = {}
        self.logs: Dict[str, Path] = {}
        self.ready = False
        for name, cmd in commands.items():
            cwd = SCRATCH / f"{name}-cwd"
            cwd.mkdir(parents=True, exist_ok=True)
            self.logs[name] = SCRATCH / f"{name}.log"
            log = open(self.logs[name], "ab")  # noqa: SIM115 (the child keeps it)
            self.procs[name] = subprocess.Popen(
                cmd, cwd=str(cwd), env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            log.close()

    def exited(self) -> Optional[str]:
        """The name of a server that is no longer running, if any."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                return name
        return None

    def last_error(self, name: str) -> str:
        try:
            lines = self.logs[name].read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        lines = [ln.strip() for ln in lines if ln.strip()]
        marked = [ln for ln in lines[-60:] if "Error" in ln or "error" in ln]
        return ((marked or lines or ["(empty log)"])[-1])[:400]

    def answers(self) -> bool:
        for port in self.ports.values():
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/ping")
                status = conn.getresponse().status
                conn.close()
            except OSError:
                return False
            if status != 200:
                return False
        return True

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# ------------------------------------------------------------------------------ front
class _Front(ThreadingHTTPServer):
    daemon_threads = True
    backends: Backends
    inflight = 0
    lock = threading.Lock()
    local = threading.local()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "dai-mlflow-image"
    disable_nagle_algorithm = True
    server: _Front

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, headers: Dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        body = json.dumps({"error_code": "TEMPORARILY_UNAVAILABLE", "message": message}).encode()
        self._send(status, body, {"Content-Type": "application/json"})

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            parts: List[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path in ("/ping", "/health"):
            ok = self.server.backends.ready
            self._send(200 if ok else 503, b"\n" if ok else b"starting\n", {})
            return
        self._forward("GET", b"")

    def do_POST(self) -> None:
        self._forward("POST", self._body())

    def _forward(self, method: str, body: bytes) -> None:
        backends = self.server.backends
        name = "rpc" if self.path.split("?", 1)[0] == "/rpc" else "invocations"
        if not backends.ready:
            self._error(503, "the model is still loading; retry when GET /ping answers 200")
            return
        with self.server.lock:
            self.server.inflight += 1
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() in _FORWARDED}
            status, reply, out = self._call(name, method, body, headers)
            self._send(status, reply, out)
        except OSError as e:
            self._error(502, f"the {name} server did not answer: {e}")
        finally:
            with self.server.lock:
                self.server.inflight -= 1

    def _call(
        self, name: str, method: str, body: bytes, headers: Dict[str, str]
    ) -> Tuple[int, bytes, Dict[str, str]]:
        conns = self.server.local.__dict__.setdefault("conns", {})
        for attempt in (1, 2):  # a kept-alive connection the server closed: once more, fresh
            conn = conns.get(name)
            if conn is None:
                port = self.server.backends.ports[name]
                conn = conns[name] = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
            try:
                conn.request(method, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                reply = resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                conns.pop(name, None)
                if attempt == 2:
                    raise
                continue
            out = {k: v for k, v in resp.getheaders() if k.lower() in _RETURNED}
            return resp.status, reply, out
        raise OSError("unreachable")


# ------------------------------------------------------------------------------ main
def check() -> int:
    """``--check``: import what serving needs (fails the image build when a library is missing)."""
    import ctypes  # noqa: F401
    import sqlite3  # noqa: F401
    import ssl  # noqa: F401
    import xml.parsers.expat  # noqa: F401

    import mlflow.pyfunc
    import pandas  # noqa: F401

    print(f"ok: Python {sys.version.split()[0]}, mlflow {mlflow.__version__}")
    return 0


def serve(environ: Dict[str, str]) -> int:
    source = check_license(environ)
    model = find_model(environ)
    check_model(model, environ.get(IMAGE_DAI_VERSION_ENV, ""))
    port = int(environ.get("PORT") or 8080)
    host = environ.get("HOST") or "0.0.0.0"
    workers = int(environ.get("WORKERS") or 1)
    SCRATCH.mkdir(parents=True, exist_ok=True)
    if carries_server(model):
        say(f"serving {model} on port {port} with its own server (license from {source})")
        workdir = SCRATCH / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        os.chdir(str(workdir))
        argv = [sys.executable, "-m", MODEL_SERVER, "--model-path", str(model), "--host", host,
                "--port", str(port)]  # fmt: skip
        if environ.get("WORKERS"):  # else the server's default: one per core
            argv += ["--workers", str(workers)]
        # exec: the server becomes the container's main process and gets its SIGTERM.
        os.execve(sys.executable, argv, server_environ(environ))
    try:
        front = _Front((host, port), _Handler)
    except OSError as e:
        raise EntryError(f"cannot listen on {host}:{port} ({e.strerror}); set PORT") from e
    ports = {"invocations": free_port(), "rpc": free_port()}
    pool = Backends(server_commands(model, ports, workers), ports, server_environ(environ))
    front.backends = pool
    stopping = threading.Event()

    def _stop(_signum: int, _frame: Any) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    say(f"serving {model} on port {port} (license from {source})")
    started = time.monotonic()
    code = 0
    while not stopping.is_set():
        gone = pool.exited()
        if gone:
            print(f"Error: the {gone} server stopped: {pool.last_error(gone)}", file=sys.stderr)
            code = 1
            break
        if not pool.ready:
            if pool.answers():
                pool.ready = True
                say(f"ready after {time.monotonic() - started:.1f}s")
            elif time.monotonic() - started > START_TIMEOUT:
                print(f"Error: the servers did not answer within {START_TIMEOUT:.0f}s",
                      file=sys.stderr)  # fmt: skip
                code = 1
                break
        stopping.wait(0.1 if not pool.ready else 1.0)
    pool.ready = False
    front.shutdown()  # no new connection is accepted; requests in flight go on
    deadline = time.monotonic() + STOP_GRACE
    while front.inflight and time.monotonic() < deadline:
        time.sleep(0.05)
    pool.stop()
    front.server_close()
    say("stopped")
    return code


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--check"]:
        return check()
    try:
        return serve(dict(os.environ))
    except EntryError as e:
        print(f"Error: {e}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
