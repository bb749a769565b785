"""A ``uvicorn`` stand-in that lets MLflow 3's ``mlflow models serve`` serve DAI 1.10 models.

MLflow 3 runs ``uvicorn ... mlflow.pyfunc.scoring_server.app:app`` in the restored model env; a
DAI 1.10 env (Python 3.8, MLflow 2.17) has neither. Python < 3.9 models carry a wheel whose
``uvicorn`` script calls :func:`main`, which maps uvicorn's arguments and execs MLflow 2.17's own
``python -m gunicorn ... scoring_server.wsgi:app`` (or the real uvicorn when the env has one).
Stdlib only and Python 3.8-safe: this file runs inside the DAI 1.10 model env.
See docs/serving.md, section 1.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

from .stdin_server import scratch_tracking_environ

MLFLOW_APP = "mlflow.pyfunc.scoring_server.app:app"  # what MLflow 3 asks uvicorn to serve
MLFLOW_WSGI_APP = "mlflow.pyfunc.scoring_server.wsgi:app"  # what MLflow 2.x serves with gunicorn
MODEL_PATH_ENV = "__pyfunc_model_path__"  # scoring_server._SERVER_MODEL_PATH in 2.17 and 3.x
TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
DEFAULT_TIMEOUT = 60
SHIM_VERSION = "1.0.0"
_NOTE = "uvicorn (dai-mlflow serving shim)"


# ------------------------------------------------------------------------------ runtime
# uvicorn options mapped to gunicorn ones (value taken as is, except where noted).
_MAPPED = {
    "--workers": "--workers",
    "--timeout-keep-alive": "--keep-alive",
    "--timeout-graceful-shutdown": "--graceful-timeout",
    "--log-level": "--log-level",
    "--backlog": "--backlog",
    "--limit-max-requests": "--max-requests",
    "--forwarded-allow-ips": "--forwarded-allow-ips",
    "--ssl-keyfile": "--keyfile",
    "--ssl-certfile": "--certfile",
}
_BIND_OPTIONS = ("--host", "--port", "--uds", "--fd")
# Other uvicorn options that take a value: skipped with a note (their value too).
_IGNORED_WITH_VALUE = frozenset(
    {
        "--loop",
        "--http",
        "--ws",
        "--ws-max-size",
        "--ws-max-queue",
        "--ws-ping-interval",
        "--ws-ping-timeout",
        "--ws-per-message-deflate",
        "--lifespan",
        "--interface",
        "--env-file",
        "--log-config",
        "--root-path",
        "--limit-concurrency",
        "--ssl-keyfile-password",
        "--ssl-version",
        "--ssl-cert-reqs",
        "--ssl-ca-certs",
        "--ssl-ciphers",
        "--header",
        "--app-dir",
        "--reload-dir",
        "--reload-include",
        "--reload-exclude",
        "--reload-delay",
        "--h11-max-incomplete-event-size",
    }
)


class ShimUsageError(Exception):
    """The command line cannot be served (exit status 2, as click's usage errors)."""


class ServeArgs:
    """What the uvicorn command line asked for, in gunicorn's terms."""

    def __init__(self) -> None:
        self.app: Optional[str] = None
        self.host = "127.0.0.1"  # uvicorn's defaults
        self.port = 8000
        self.uds: Optional[str] = None
        self.fd: Optional[str] = None
        self.options: List[str] = []  # mapped gunicorn options
        self.ignored: List[str] = []
        self.show: Optional[str] = None  # "help" or "version"

    def bind(self) -> str:
        """gunicorn's ``-b`` value."""
        if self.uds:
            return f"unix:{self.uds}"
        if self.fd:
            return f"fd://{self.fd}"
        host = f"[{self.host}]" if ":" in self.host else self.host  # IPv6 literal
        return f"{host}:{self.port}"


def _split(argv: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """``--opt=value`` / ``--opt value`` / flags / positionals as (name, value) pairs."""
    takes_value = set(_MAPPED) | set(_BIND_OPTIONS) | _IGNORED_WITH_VALUE
    items: List[Tuple[str, Optional[str]]] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--") and "=" in arg:
            name, value = arg.split("=", 1)
            items.append((name, value))
        elif arg in takes_value:
            if i + 1 >= len(argv):
                raise ShimUsageError(f"Option '{arg}' requires an argument.")
            items.append((arg, argv[i + 1]))
            i += 1
        else:
            items.append((arg, None))
        i += 1
    return items


def parse_args(argv: Sequence[str]) -> ServeArgs:
    """Read uvicorn's command line (the forms MLflow 3's ``serve`` passes, and more).

    Raises:
        ShimUsageError: no app, a non-integer port/worker count, or an app other than MLflow's.
    """
    args = ServeArgs()
    for name, value in _split(argv):
        if name in ("--help", "--version"):
            args.show = name[2:]
        elif name == "--host" and value is not None:
            args.host = value
        elif name == "--port" and value is not None:
            args.port = _integer(name, value)
        elif name == "--uds":
            args.uds = value
        elif name == "--fd":
            args.fd = value
        elif name in _MAPPED and value is not None:
            if name == "--workers":
                value = str(_integer(name, value))
            elif name == "--log-level" and value == "trace":
                value = "debug"  # gunicorn has no trace level
            args.options += [_MAPPED[name], value]
        elif name.startswith("-"):
            args.ignored.append(name if value is None else f"{name}={value}")
        elif args.app is None:
            args.app = name
        else:
            raise ShimUsageError(f"Got unexpected extra argument ({name})")
    if args.show is None:
        if args.app is None:
            raise ShimUsageError("Missing argument 'APP'.")
        if args.app != MLFLOW_APP:
            raise ShimUsageError(
                f"this uvicorn is dai-mlflow's serving shim: it serves only {MLFLOW_APP} "
                f"(got {args.app})"
            )
    return args


def _integer(name: str, value: str) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise ShimUsageError(
            f"Invalid value for '{name}': {value!r} is not a valid integer."
        ) from e


def gunicorn_argv(args: ServeArgs, environ: Mapping[str, str]) -> List[str]:
    """MLflow 2.x's own ``gunicorn`` command for ``args`` (the python ``-m`` form).

    The worker timeout is ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``, as MLflow 2.x sets it;
    ``GUNICORN_CMD_ARGS`` and ``WEB_CONCURRENCY`` are read by gunicorn itself.
    """
    timeout = environ.get(TIMEOUT_ENV) or str(DEFAULT_TIMEOUT)
    argv = [sys.executable, "-m", "gunicorn", f"--timeout={timeout}", "-b", args.bind()]
    return [*argv, *args.options, "--", MLFLOW_WSGI_APP]


def _mlflow_has_asgi_app() -> bool:
    spec = importlib.util.find_spec("mlflow")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return False
    folders = list(spec.submodule_search_locations)
    return any((Path(f) / "pyfunc" / "scoring_server" / "app.py").is_file() for f in folders)


def server_environ(environ: Mapping[str, str]) -> Dict[str, str]:
    """The server's environment: ``environ``, minus a database tracking store.

    The model is already a local folder (``__pyfunc_model_path__``), so the server needs no
    tracking store; but loading a model enables tracing, which opens ``MLFLOW_TRACKING_URI``, and
    MLflow 2.x cannot open a database store that MLflow 3 created. Such a URI is replaced by a
    file store inside the env (shared by its servers, removed with the env): gunicorn replaces
    this process, so a store removed at exit would not do.
    """
    store = Path(sys.prefix) / "var" / "dai_mlflow_serving_shim" / "mlruns"
    env = scratch_tracking_environ(environ, store)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        if env.get(var) != environ.get(var):
            _say(f"{var} is a database store MLflow 3 may own; serving with {store} instead")
    return env


def _say(message: str) -> None:
    print(f"{_NOTE}: {message}", file=sys.stderr, flush=True)


def _usage() -> str:
    mapped = ", ".join(["--host", "--port", "--uds", "--fd", *_MAPPED])
    return (
        f"Usage: uvicorn [OPTIONS] {MLFLOW_APP}\n\n"
        "dai-mlflow serving shim: MLflow 3's `mlflow models serve` runs uvicorn in the model env;\n"
        "this env's MLflow 2.x serves with gunicorn instead.\n"
        f"Mapped to gunicorn: {mapped}.\nOther options are ignored with a note.\n"
    )


def _exec(argv: List[str], env: Mapping[str, str]) -> NoReturn:
    sys.stderr.flush()
    sys.stdout.flush()
    os.execve(argv[0], argv, dict(env))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The ``uvicorn`` console script: exec the env's MLflow 2.x scoring server."""
    argv = list(sys.argv[1:] if argv is None else argv)
    has_uvicorn = importlib.util.find_spec("uvicorn") is not None
    if has_uvicorn and _mlflow_has_asgi_app():
        # A real uvicorn and MLflow's FastAPI app: nothing to stand in for.
        _exec([sys.executable, "-m", "uvicorn", *argv], os.environ)
    try:
        args = parse_args(argv)
    except ShimUsageError as e:
        print(f"{_usage()}\nError: {e}", file=sys.stderr)
        return 2
    if args.show == "help":
        print(_usage())
        return 0
    if args.show == "version":
        print(f"{_NOTE} {SHIM_VERSION}: serves MLflow 2.x models with gunicorn")
        return 0
    for option in args.ignored:
        _say(f"ignoring {option} (no gunicorn equivalent)")
    if importlib.util.find_spec("gunicorn") is None:
        _say(
            f"gunicorn is not installed in {sys.prefix}: install MLflow's serving extras there "
            "(full `mlflow`, not `mlflow-skinny`) or serve with `python -m dai_mlflow.serve`"
        )
        return 127
    if MODEL_PATH_ENV not in os.environ:
        _say(f"{MODEL_PATH_ENV} is not set; run this through `mlflow models serve`")
        return 2
    command = gunicorn_argv(args, os.environ)
    _say("serving with " + " ".join(command[1:]))
    _exec(command, server_environ(os.environ))


if __name__ == "__main__":
    sys.exit(main())
