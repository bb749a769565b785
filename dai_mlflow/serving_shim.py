"""A ``uvicorn`` stand-in that lets MLflow 3's ``mlflow models serve`` serve DAI 1.10 models.

Why: ``mlflow models serve -m URI --env-manager uv`` (MLflow 3) restores the model's env and runs
``exec uvicorn --host H --port P --workers N mlflow.pyfunc.scoring_server.app:app`` *inside* it,
with the model path in ``__pyfunc_model_path__`` and the request timeout in
``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``. A DAI 1.10 model env holds Python 3.8 and MLflow 2.17:
no uvicorn and no FastAPI app, so the command exits 127. MLflow 2.17 serves the same model with
``gunicorn ... mlflow.pyfunc.scoring_server.wsgi:app`` and reads the same two variables.

This module has two roles:

* **Builder** (launcher side): :func:`build_wheel` writes ``dai_mlflow_serving_shim-<v>-py3-none-
  any.whl`` reproducibly (stored zip entries, fixed timestamps and modes, sorted entries: the same
  bytes on every run and builder Python). The wheel holds *this file* as the top-level module
  ``dai_mlflow_serving_shim`` and a ``uvicorn`` console script pointing at :func:`main`.
  :func:`add_to_model` puts it under ``<model>/code/`` for Python < 3.9 models (MLflow 3 cannot be
  installed there, so no real uvicorn can clash with the script) and returns the
  ``requirements.txt`` line for it.
* **Runtime** (model env, Python 3.8): :func:`main` reads uvicorn's arguments, maps those with a
  gunicorn meaning (host/port/uds/fd, workers, keep-alive, graceful timeout, log level, ...),
  ignores the rest with a note on stderr, and *replaces itself* (``os.execv``) with the env's own
  ``python -m gunicorn --timeout=<MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT> -b H:P [-w N] --
  mlflow.pyfunc.scoring_server.wsgi:app``, exactly MLflow 2.17's own serving command, so MLflow's
  SIGTERM (and its parent-death signal) reach gunicorn directly. If the env does have uvicorn and
  MLflow's FastAPI app, it execs ``python -m uvicorn`` with the arguments unchanged.

Stdlib only and Python 3.8-safe: this file runs inside the DAI 1.10 model env. It imports nothing
from ``dai_mlflow`` at module level for the same reason.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import os
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Mapping, NoReturn, Optional, Sequence, Tuple

PROJECT = "dai_mlflow_serving_shim"
SHIM_VERSION = "1.0.0"  # bump when the runtime part changes: MLflow keys envs by requirement text
WHEEL_TAG = "py3-none-any"
WHEEL_FILE_NAME = f"{PROJECT}-{SHIM_VERSION}-{WHEEL_TAG}.whl"
MODEL_SUBDIR = "code"  # MLflow's documented place for wheels shipped with a model
SCRIPT_NAME = "uvicorn"
MLFLOW_APP = "mlflow.pyfunc.scoring_server.app:app"  # what MLflow 3 asks uvicorn to serve
MLFLOW_WSGI_APP = "mlflow.pyfunc.scoring_server.wsgi:app"  # what MLflow 2.x serves with gunicorn
MODEL_PATH_ENV = "__pyfunc_model_path__"  # scoring_server._SERVER_MODEL_PATH in 2.17 and 3.x
TIMEOUT_ENV = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"
DEFAULT_TIMEOUT = 60
# Only Pythons MLflow 3 does not support get the shim (a real uvicorn can never be there).
SHIM_BELOW_PYTHON = (3, 9)
FIXED_DATE_TIME = (1980, 1, 1, 0, 0, 0)
_FILE_MODE = 0o100644
# Stores MLflow 2.17 cannot open when MLflow 3 created them ("Can't locate revision").
_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")
_NOTE = "uvicorn (dai-mlflow serving shim)"


# ------------------------------------------------------------------------------ builder
def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def wheel_files() -> Dict[str, bytes]:
    """Archive name -> bytes of the shim wheel (RECORD included)."""
    dist_info = f"{PROJECT}-{SHIM_VERSION}.dist-info"
    summary = "uvicorn command that serves MLflow 2.x models with gunicorn (dai-mlflow)"
    metadata = [
        "Metadata-Version: 2.1",
        f"Name: {PROJECT}",
        f"Version: {SHIM_VERSION}",
        f"Summary: {summary}",
        "License: Apache-2.0",
        "Requires-Python: >=3.7",
    ]
    wheel = [
        "Wheel-Version: 1.0",
        "Generator: dai-mlflow serving_shim (zipfile)",
        "Root-Is-Purelib: true",
        f"Tag: {WHEEL_TAG}",
    ]
    files = {
        f"{PROJECT}.py": Path(__file__).read_bytes(),
        f"{dist_info}/METADATA": ("\n".join(metadata) + "\n\n" + summary + "\n").encode(),
        f"{dist_info}/WHEEL": ("\n".join(wheel) + "\n").encode(),
        f"{dist_info}/entry_points.txt": (
            f"[console_scripts]\n{SCRIPT_NAME} = {PROJECT}:main\n"
        ).encode(),
        f"{dist_info}/top_level.txt": f"{PROJECT}\n".encode(),
    }
    record_name = f"{dist_info}/RECORD"
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in sorted(files.items())]
    record.append(f"{record_name},,")
    files[record_name] = ("\n".join(record) + "\n").encode()
    return files


def build_wheel(out_dir: Path) -> Path:
    """Write the shim wheel into ``out_dir`` (byte-identical on every run); its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / WHEEL_FILE_NAME
    tmp = out_dir / f".{WHEEL_FILE_NAME}.{os.getpid()}.tmp"
    files = wheel_files()
    with zipfile.ZipFile(tmp, "w") as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=FIXED_DATE_TIME)
            info.compress_type = zipfile.ZIP_STORED  # no dependence on the builder's zlib
            info.create_system = 3
            info.external_attr = _FILE_MODE << 16
            zf.writestr(info, files[name])
    tmp.replace(path)
    return path


def needs_shim(python_version: str) -> bool:
    """Whether a model env of ``python_version`` ("3.8.18", "3.8") gets the shim.

    Raises:
        ValueError: ``python_version`` is not ``X.Y[.Z]``.
    """
    parts = python_version.strip().split(".")
    try:
        major_minor = (int(parts[0]), int(parts[1]))
    except (IndexError, ValueError) as e:
        raise ValueError(f"python version {python_version!r} is not X.Y[.Z]") from e
    return major_minor < SHIM_BELOW_PYTHON


def add_to_model(model_dir: Path, python_version: str) -> Optional[str]:
    """Ship the shim with a model whose env cannot run MLflow 3's uvicorn server.

    For Python < 3.9 models, writes the wheel to ``<model_dir>/code/`` and returns the line to
    append to the model's ``requirements.txt`` (relative to the model folder, as MLflow resolves
    it when restoring the env). Python 3.9+ models (MLflow 3 serves them natively) get nothing.

    Args:
        model_dir: the saved model folder (holding ``MLmodel`` and ``requirements.txt``).
        python_version: the model env's Python, as in its ``python_env.yaml``.

    Returns:
        ``./code/dai_mlflow_serving_shim-<v>-py3-none-any.whl``, or None for Python 3.9+.

    Raises:
        DaiMlflowError: ``python_version`` is malformed or the folder is not writable.
    """
    from dai_mlflow.errors import DaiMlflowError

    try:
        if not needs_shim(python_version):
            return None
        wheel = build_wheel(model_dir / MODEL_SUBDIR)
    except (ValueError, OSError) as e:
        raise DaiMlflowError(f"cannot add the serving shim to {model_dir}: {e}") from e
    return f"./{MODEL_SUBDIR}/{wheel.name}"


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
    file store inside the env (shared by its servers, removed with the env).
    """
    env = dict(environ)
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        scheme = env.get(var, "").split(":", 1)[0].split("+", 1)[0].lower()
        if scheme in _DATABASE_SCHEMES:
            store = Path(sys.prefix) / "var" / PROJECT / "mlruns"
            env[var] = store.as_uri()
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
