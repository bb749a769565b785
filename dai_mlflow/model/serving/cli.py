"""Command line and supervisor of the model's server (options: docs/serving.md, section 0).

The supervisor imports only the stdlib, reserves the port and forks N workers before anything
else loads (a DAI scorer must not be shared across a fork). Each worker loads the model, then
binds the port with ``SO_REUSEPORT``; a worker that dies is replaced, and if the first cannot
start, the server exits 1 with its one-line error. SIGTERM/SIGINT stop the workers gracefully.
Over 400 lines: the supervisor and the worker start-up share the fork and ready-pipe protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import os
import select
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from typing import Dict, List, Optional, Sequence, Tuple

from dai_mlflow.model import http_limits as limits

PROG = "python -m dai_mlflow_model_hooks.serve"
NOTE = "[dai-mlflow]"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_BATCH_ROWS = 1000
DEFAULT_MAX_WAIT_MS = 2.0
RESTART_DELAY = 1.0  # a worker that dies within STARTUP_GRACE of its start is restarted later
STARTUP_GRACE = 5.0
STOP_GRACE = 10.0
READY = b"ready\n"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The options (``--help`` lists them)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Serve a logged DAI model from its own env: POST /invocations (MLflow's protocol), "
            "POST /rpc (DAI's JSON-RPC), GET /ping /health /version /metrics; concurrent "
            "requests share scorer calls."
        ),
    )
    parser.add_argument("--model-path", required=True, help="the model folder (its MLmodel)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"(default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="(default 8080; 0: any)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: cores)")
    parser.add_argument(
        "--max-batch-rows",
        type=int,
        default=DEFAULT_MAX_BATCH_ROWS,
        help=f"most rows per scorer call (default {DEFAULT_MAX_BATCH_ROWS})",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=DEFAULT_MAX_WAIT_MS,
        help=f"longest wait for more requests to merge (default {DEFAULT_MAX_WAIT_MS:g})",
    )
    parser.add_argument("--no-batching", action="store_true", help="one scorer call per request")
    parser.add_argument(
        "--log-requests", metavar="DIR", default=None, help="append served rows to DIR (parquet)"
    )
    limits.add_arguments(parser)  # --body-limit, --client-timeout, --max-connections
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="answer 504 to a request still waiting for the scorer after this long",
    )
    args = parser.parse_args(argv)
    try:
        args.limits = limits.from_arguments(args)
    except limits.LimitsError as e:
        parser.error(str(e))
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0..65535, got {args.port}")
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers must be at least 1, got {args.workers}")
    if args.max_batch_rows < 1:
        parser.error(f"--max-batch-rows must be at least 1, got {args.max_batch_rows}")
    if args.max_wait_ms < 0:
        parser.error(f"--max-wait-ms must be 0 or more, got {args.max_wait_ms}")
    if args.timeout is not None and args.timeout <= 0:
        parser.error(f"--timeout must be more than 0, got {args.timeout}")
    return args


def _reuseport() -> bool:
    return hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


def _family(host: str) -> int:
    try:
        return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:
        return socket.AF_INET


def _socket(host: str, port: int, reuseport: bool) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_port(host: str, port: int) -> Tuple[socket.socket, bool]:
    """A bound socket that holds the port for the workers; (socket, workers bind their own).

    With ``SO_REUSEPORT`` another process of this user could share a taken port silently, so
    the port is first probed without it.
    """
    if not _reuseport():
        sock = _socket(host, port, False)
        sock.listen(1024)
        return sock, False
    if port:
        _socket(host, port, False).close()  # EADDRINUSE when anyone holds it
    return _socket(host, port, True), True


def _worker_socket(host: str, port: int, reserved: socket.socket, own: bool) -> socket.socket:
    if not own:
        return reserved
    sock = _socket(host, port, True)
    sock.listen(1024)
    return sock


def _die_with_parent() -> None:
    try:  # Linux: SIGTERM when the supervisor dies, whatever killed it
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # elsewhere the worker notices its parent in its sweep
        pass


def run_worker(args: argparse.Namespace, reserved: socket.socket, own: bool, ready_fd: int) -> int:
    """A worker's life (in the forked child): load, listen, serve until SIGTERM."""
    _die_with_parent()
    parent = os.getppid()
    from .app import ServerConfig, Worker, model_info
    from .metrics import Metrics

    inference_log = None
    try:
        config = ServerConfig(
            os.path.abspath(args.model_path),
            max_batch_rows=args.max_batch_rows,
            max_wait_ms=args.max_wait_ms,
            batching=not args.no_batching,
            log_requests=args.log_requests,
            body_limit=args.limits.body_limit,
            timeout=args.timeout,
            connection_timeout=args.limits.client_timeout,
            max_connections=args.limits.max_connections,
        )
        info = model_info(config.model_path)
        metrics = Metrics(info)
        if args.log_requests:
            from .inference_log import InferenceLog

            inference_log = InferenceLog(args.log_requests, info, metrics)
            inference_log.start()
        worker = Worker(config, metrics, inference_log)
        sock = _worker_socket(args.host, reserved.getsockname()[1], reserved, own)
        if own:
            reserved.close()
        metrics.worker_starts.inc()
    except BaseException as e:  # one line to the supervisor, whatever it was
        if not _expected(e):
            traceback.print_exc(file=sys.stderr)
        sys.stderr.flush()
        os.write(ready_fd, ("error: " + _one_line(e) + "\n").encode("utf-8", "replace"))
        return 1

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)

        def watch_parent() -> None:
            if os.getppid() != parent:
                stop.set()
            loop.call_later(1.0, watch_parent)

        watch_parent()
        serving = asyncio.ensure_future(worker.serve(sock))
        await asyncio.sleep(0)
        os.write(ready_fd, READY)
        os.close(ready_fd)
        await stop.wait()
        # Stopping: a second SIGTERM (the supervisor's after the group's) must not end this
        # process while it finishes answers and writes its inference log; the supervisor
        # SIGKILLs it after its grace. (Removing asyncio's handler later would restore SIG_DFL.)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
            signal.signal(signum, signal.SIG_IGN)
        if worker.http is not None:  # stop accepting; let answers in progress leave
            for server in worker.http._servers:
                server.close()
            deadline = time.monotonic() + STOP_GRACE
            while time.monotonic() < deadline and any(
                c.in_progress for c in worker.http.connections
            ):
                await asyncio.sleep(0.05)
            worker.http.close()
        serving.cancel()

    try:
        asyncio.run(main())
    except asyncio.CancelledError:
        pass
    finally:
        if inference_log is not None:
            inference_log.close()
    return 0


def _expected(error: BaseException) -> bool:
    # The model's own errors (no license, a scorer that will not start) say all in one line.
    names = {c.__name__ for c in type(error).__mro__}
    return bool(names & {"ModelLoadError", "DaiMlflowError"})


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    name = type(error).__name__
    if name == "ModelLoadError" or any(c.__name__ == "DaiMlflowError" for c in type(error).__mro__):
        return text or name
    return f"{name}: {text}" if text else name


class Supervisor:
    """Keeps ``n`` workers alive on the reserved port."""

    def __init__(self, args: argparse.Namespace, reserved: socket.socket, own: bool) -> None:
        self.args = args
        self.reserved = reserved
        self.own = own
        self.n = args.workers or os.cpu_count() or 1
        self.workers: Dict[int, Tuple[int, float]] = {}  # pid -> (ready pipe fd, start time)
        self.ready_pids: List[int] = []
        self.stopping = False
        self.announced = False

    def spawn(self) -> int:
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            os.close(read_fd)
            code = 1
            try:
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                code = run_worker(self.args, self.reserved, self.own, write_fd)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(write_fd)
        self.workers[pid] = (read_fd, time.monotonic())
        return pid

    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._stop)
        for _ in range(self.n):
            self.spawn()
        restart_at: List[float] = []
        while self.workers or restart_at:
            if self.stopping:
                break
            error = self._read_ready(0.2)
            if error is not None and not self.announced:
                self._stop_all()
                print(f"Error: {error}", file=sys.stderr, flush=True)
                return 1
            now = time.monotonic()
            for pid, started in self._reap():
                if self.stopping:
                    continue
                delay = RESTART_DELAY if now - started < STARTUP_GRACE else 0.0
                print(f"{NOTE} worker {pid} ended; starting another", file=sys.stderr, flush=True)
                restart_at.append(now + delay)
            due = [t for t in restart_at if t <= now]
            for t in due:
                restart_at.remove(t)
                self.spawn()
        self._stop_all()
        return 0

    def _read_ready(self, timeout: float) -> Optional[str]:
        fds = {fd: pid for pid, (fd, _) in self.workers.items() if fd >= 0}
        if not fds:
            time.sleep(timeout)
            return None
        try:
            readable, _, _ = select.select(list(fds), [], [], timeout)
        except InterruptedError:
            return None
        for fd in readable:
            pid = fds[fd]
            data = b""
            with contextlib.suppress(OSError):
                data = os.read(fd, 65536)
            os.close(fd)
            self.workers[pid] = (-1, self.workers[pid][1])
            if data.startswith(READY):
                self.ready_pids.append(pid)
                self._announce()
            else:
                text = data.decode("utf-8", "replace").strip()
                return (
                    text[len("error: ") :]
                    if text.startswith("error: ")
                    else (text or f"worker {pid} ended before it was ready")
                )
        return None

    def _announce(self) -> None:
        if self.announced:
            return
        self.announced = True
        port = self.reserved.getsockname()[1]
        host = self.args.host
        # DAI's http_server.py prints this line; scripts that wait for it keep working.
        print(f"HTTP scoring service listening on port {port}...", flush=True)
        version = ".".join(str(v) for v in sys.version_info[:3])
        print(
            f"{NOTE} serving {self.args.model_path} with Python {version} ({sys.executable}) "
            f"on http://{host}:{port}: /invocations, /rpc, /metrics; {self.n} worker(s)",
            file=sys.stderr,
            flush=True,
        )

    def _reap(self) -> List[Tuple[int, float]]:
        ended = []
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            fd, started = self.workers.pop(pid, (-1, 0.0))
            if fd >= 0:  # died before it said ready: its error is in its pipe
                self.workers[pid] = (fd, started)
                error = self._read_ready(0)
                self.workers.pop(pid, None)
                if error is not None and not self.announced:
                    self._stop_all()
                    print(f"Error: {error}", file=sys.stderr, flush=True)
                    raise SystemExit(1)
            ended.append((pid, started))
        return ended

    def _stop(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def _stop_all(self) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                self.workers.pop(pid, None)
        deadline = time.monotonic() + STOP_GRACE + 2
        while self.workers and time.monotonic() < deadline:
            for pid in list(self.workers):
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid
                if done:
                    self.workers.pop(pid, None)
            time.sleep(0.05)
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        self.workers.clear()


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Serve until SIGTERM/SIGINT; 0, or 1 with a one-line error when it cannot start."""
    args = parse_args(argv)
    if not os.path.isfile(os.path.join(args.model_path, "MLmodel")):
        print(f"Error: {args.model_path} is not a model folder (no MLmodel)", file=sys.stderr)
        return 1
    warning = limits.bind_warning(args.host, args.port)
    if warning:
        print(f"{NOTE} {warning}", file=sys.stderr, flush=True)
    try:
        reserved, own = reserve_port(args.host, args.port)
    except OSError as e:
        reason = "the port is taken" if e.errno == errno.EADDRINUSE else e.strerror
        print(f"Error: cannot listen on {args.host}:{args.port}: {reason} ({e})", file=sys.stderr)
        return 1
    from .metrics import MULTIPROC_ENV

    metrics_dir = tempfile.mkdtemp(prefix="dai-mlflow-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        return Supervisor(args, reserved, own).run()
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        reserved.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
