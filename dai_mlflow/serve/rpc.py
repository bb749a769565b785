"""DAI's JSON-RPC scoring protocol (``POST /rpc``) over a logged DAI model.

``python -m dai_mlflow.serve.rpc --model-uri URI``: DAI's ``http_server.py`` methods (``score``,
``score_batch``, ``get_column_names``, ...) with DAI's result and error shapes, for clients that
move to MLflow-packaged models unchanged. One file (~650 lines) on purpose: it is also copied
beside a model and run there as a script by the model env's Python (stdlib at import, then the
model's own ``dai_mlflow``; Python 3.8-safe). See docs/serving.md, section 2.
"""

from __future__ import annotations

import json
import math
import re
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

# dai_mlflow.errors' note and error prefixes, spelled here: this file also runs as a script in
# the model's env, before the model's dai_mlflow is importable.
NOTE = "[dai-mlflow]"
ERROR = "Error:"
RPC_PATH = "/rpc"
PING_PATH = "/ping"
DEFAULT_PORT = 9090
DEFAULT_HOST = "127.0.0.1"
if __package__:
    from dai_mlflow.model import http_limits as limits
else:  # run as a script (the copy beside a model): the limits module copied next to it
    import dai_mlflow_http_limits as limits  # type: ignore[no-redef]
try:
    from dai_mlflow.envs.model_env import ENV_MANAGERS
except ImportError:  # the copy run inside a model env serves there: --env-manager local only
    ENV_MANAGERS = ("local",)
DEFAULT_ENV_MANAGER = "uv"
METHODS = (
    "score",
    "score_batch",
    "get_column_names",
    "get_transformed_column_names",
    "get_target_labels",
    "get_hash",
)
ERROR_CODE = 1  # DAI's http_server.py answers every error with code 1
_SHOWN = 200  # characters of a client's value quoted in an error message
_MODULE_PREFIX = "scoring_h2oai_experiment_"
_UUID_KEY = re.compile(r"^[0-9a-f]{8}(_[0-9a-f]{4}){3}_[0-9a-f]{12}$")
_MAX = sys.float_info.max


class RpcError(Exception):
    """A request the service answers with a JSON-RPC error object (one-line message)."""

    def __init__(self, message: str, status: int = 200) -> None:
        super().__init__(message)
        self.status = status


class ModelLoadError(Exception):
    """The model cannot be served: bad URI, missing license, scorer fails to start."""


def experiment_hash(module_name: str) -> str:
    """DAI's ``get_hash()``: the experiment UUID behind ``scoring_h2oai_experiment_<key>``.

    The key is the UUID with ``-`` replaced by ``_``; keys that are not UUIDs (older word keys)
    are returned as they are.
    """
    key = module_name[len(_MODULE_PREFIX) :] if module_name.startswith(_MODULE_PREFIX) else ""
    if not key:
        return module_name
    return key.replace("_", "-") if _UUID_KEY.match(key) else key


def one_line(error: BaseException) -> str:
    """``Type: message`` on one line (the last line of the traceback DAI would send)."""
    text = " ".join(str(error).split())
    name = type(error).__name__
    return f"{name}: {text}" if text else name


def _largest(value: Any) -> float:
    try:
        import numpy as np

        if isinstance(value, np.floating):
            return float(np.finfo(value.dtype).max)
    except ImportError:  # pragma: no cover - numpy is always there with pandas
        pass
    return sys.float_info.max


def to_jsonable(value: Any) -> Any:
    """Plain JSON values: numpy scalars/arrays unwrapped; NaN/inf as the dtype's max (DAI)."""
    kind = type(value)
    if kind is float and -_MAX <= value <= _MAX:  # the common case first: a finite float
        return value
    if kind is list and all(type(v) is float and -_MAX <= v <= _MAX for v in value):
        return value
    if isinstance(value, float) or kind.__name__.startswith("float"):
        number = float(value)
        if math.isnan(number) or math.isinf(number):
            big = _largest(value)
            return -big if number < 0 else big
        return number
    if isinstance(value, (str, bool, int)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if hasattr(value, "tolist"):
        return to_jsonable(value.tolist())
    if hasattr(value, "item"):
        return to_jsonable(value.item())
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return str(value)


def decode_body(body: bytes) -> Any:
    """Parse a request body: strict JSON, else DAI's reading with literal backslashes.

    DAI's server decodes ``body.decode().encode("unicode_escape")`` "in case there are
    backslashes in column names", so its clients may send a raw ``\\`` inside a string, which
    is not valid JSON. Valid JSON is read as JSON; only a body that fails is read DAI's way.

    Raises:
        RpcError: empty body, not UTF-8, or not JSON either way (HTTP 400).
    """
    if not body.strip():
        raise RpcError("Bad request: empty body; send a JSON-RPC request object", 400)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RpcError(f"Bad request: body is not UTF-8 ({e})", 400) from e
    try:
        return json.loads(text)
    except RecursionError:
        raise _too_deep() from None
    except ValueError as first:
        try:
            return json.loads(text.encode("unicode_escape"))
        except RecursionError:
            raise _too_deep() from None
        except ValueError:
            raise RpcError(f"Bad request: body is not JSON ({first})", 400) from first


def _too_deep() -> RpcError:
    return RpcError("Bad request: the JSON is nested too deeply", 400)


class ScoringService:
    """The JSON-RPC methods over one built DAI scorer (and the pyfunc for ``score_batch``).

    Args:
        scorer: the DAI ``Scorer``.
        module_name: its module (``scoring_h2oai_experiment_<key>``).
        predict: the pyfunc's ``predict(frame, params=...)`` (the ``/invocations`` path).
        prepare: reorders/coerces a frame to the model's columns and types.
        run_in_workdir: a context manager factory: the scorer's working folder as cwd.
        parse_flags: checks and fills ``output_margin``/``pred_contribs`` (the pyfunc's rules).
    """

    def __init__(
        self,
        scorer: Any,
        module_name: str,
        predict: Callable[..., Any],
        prepare: Callable[[Any], Any],
        run_in_workdir: Callable[[], Any],
        parse_flags: Callable[[Mapping[str, Any]], Dict[str, bool]],
    ) -> None:
        self.scorer = scorer
        self.module_name = module_name
        self._predict = predict
        self._prepare = prepare
        self._workdir = run_in_workdir
        self._parse_flags = parse_flags
        # One call at a time: the scorer's working folder (./tmp) is process-wide.
        self._lock = threading.Lock()
        self.columns: List[str] = [str(c) for c in scorer.get_column_names()]

    def _flags(self, output_margin: Any, pred_contribs: Any) -> Dict[str, bool]:
        return self._parse_flags({"output_margin": output_margin, "pred_contribs": pred_contribs})

    # ---------------------------------------------------------------- JSON-RPC methods
    def score(self, row: Any, output_margin: Any = False, pred_contribs: Any = False) -> Any:
        """One row → the scorer's ``score`` list (probabilities, value, or contributions)."""
        flags = self._flags(output_margin, pred_contribs)
        values = self._row_values(row)
        # By name and only when set, as the pyfunc calls score_batch: a scorer whose signature
        # orders its keyword arguments differently, or lacks one, still scores plain rows.
        kwargs = {k: v for k, v in flags.items() if v}
        with self._lock, self._workdir():
            return self.scorer.score(values, **kwargs)

    def score_batch(
        self, rows: Any, output_margin: Any = False, pred_contribs: Any = False
    ) -> List[List[Any]]:
        """Rows → one list of outputs per row (``score_batch``'s frame as lists)."""
        flags = self._flags(output_margin, pred_contribs)
        if not isinstance(rows, list):
            raise RpcError(f"'rows' must be a list of row objects, got {_kind(rows)}")
        if not rows:
            return []
        frame = self._prepare(self._rows_frame(rows))
        with self._lock:
            result = self._predict(frame, params=flags)
        return result.values.tolist() if hasattr(result, "values") else list(result)

    def get_column_names(self) -> List[str]:
        """Input column names, in the order ``score`` takes a row list."""
        return list(self.columns)

    def get_transformed_column_names(self) -> List[str]:
        """Names of the engineered features (contributions come in this order, then bias)."""
        with self._lock:
            return [str(c) for c in self.scorer.get_transformed_column_names()]

    def get_target_labels(self) -> List[Any]:
        """Class labels; ``[]`` for regression (DAI's server answers so for None)."""
        with self._lock:
            labels = self.scorer.get_target_labels()
        if labels is None:
            return []
        return list(labels.tolist() if hasattr(labels, "tolist") else labels)

    def get_hash(self) -> str:
        """The experiment's hash (its UUID), as DAI's generated server returns it."""
        return experiment_hash(self.module_name)

    # ---------------------------------------------------------------- helpers
    def _row_values(self, row: Any) -> List[Any]:
        if isinstance(row, Mapping):
            missing = [c for c in self.columns if c not in row]
            if missing:
                raise RpcError(f"row is missing {len(missing)} column(s): {_names(missing)}")
            return [row[c] for c in self.columns]
        if isinstance(row, list):
            if len(row) != len(self.columns):
                raise RpcError(
                    f"row list has {len(row)} values, the model takes {len(self.columns)}: "
                    f"{_names(self.columns)}"
                )
            return list(row)
        raise RpcError(f"'row' must be an object keyed by column name, got {_kind(row)}")

    def _rows_frame(self, rows: Sequence[Any]) -> Any:
        import pandas as pd

        records: List[Any] = []
        columns = set(self.columns)
        for i, row in enumerate(rows):
            if isinstance(row, list) and len(row) == len(self.columns):
                row = dict(zip(self.columns, row))
            if not isinstance(row, Mapping):
                raise RpcError(
                    f"rows[{i}] must be an object keyed by column name, got {_kind(row)}"
                )
            if not columns.issubset(row.keys()):
                missing = [c for c in self.columns if c not in row]
                raise RpcError(f"rows[{i}] is missing {len(missing)} column(s): {_names(missing)}")
            records.append(row)
        # Object columns: values stay as sent until the model's own coercion reads them.
        frame = pd.DataFrame.from_records(records, columns=self.columns)
        return frame.astype(object)

    def call(self, method: str, params: Mapping[str, Any]) -> Any:
        """Run ``method`` with by-name ``params``; wrong names raise ``TypeError`` as in DAI."""
        return getattr(self, method)(**params)


def _names(columns: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(c) for c in columns[:limit])
    return shown + (f", ... ({len(columns) - limit} more)" if len(columns) > limit else "")


def _kind(value: Any) -> str:
    kinds: Dict[type, str] = {dict: "an object", list: "a list", str: "a string"}
    return kinds.get(type(value), type(value).__name__)


# ------------------------------------------------------------------------------ protocol
def handle(service: Any, body: bytes) -> Tuple[int, Dict[str, Any]]:
    """Answer one HTTP body: (HTTP status, JSON-RPC response object). Never raises."""
    try:
        return _handle(service, body)
    except Exception as e:  # a bug here must not cost the client its answer
        traceback.print_exc(file=sys.stderr)
        return 500, _error(None, f"Internal error: {one_line(e)}"[:1000])


def answer(service: Any, body: bytes) -> Tuple[int, bytes]:
    """Answer one HTTP body: (HTTP status, the JSON response's bytes). Never raises."""
    status, payload = handle(service, body)
    try:
        return status, json.dumps(payload, allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as e:  # a result JSON cannot carry
        error = _error(payload.get("id"), f"the result cannot be sent as JSON: {one_line(e)}")
        return 200, json.dumps(error).encode("utf-8")


def _handle(service: Any, body: bytes) -> Tuple[int, Dict[str, Any]]:
    request_id = None
    try:
        request = decode_body(body)
        if not isinstance(request, dict):
            raise RpcError(f"Bad request: want a JSON-RPC request object, got {_kind(request)}.")
        if "id" not in request:
            raise RpcError("Bad request: want 'id' in RPC request.")
        if not _is_id(request["id"]):
            raise RpcError(
                "Bad request: 'id' must be a string, a number or null (JSON-RPC 2.0), "
                f"got {_kind(request['id'])}"
            )
        request_id = request["id"]
        if "method" not in request:
            raise RpcError("Bad request: want 'method' in RPC request.")
        method = request["method"]
        if method not in METHODS:
            shown = method[:_SHOWN] if isinstance(method, str) else _kind(method)
            raise RpcError(f"Method not found: {shown}")
        if "params" not in request:
            raise RpcError("Bad request: want 'params' in RPC request.")
        params = request["params"]
        if not isinstance(params, dict):
            raise RpcError(f"Bad request: want 'params' by-name, got {_shown(params)}")
        result = to_jsonable(service.call(method, params))
        return 200, {"jsonrpc": "2.0", "id": request_id, "result": result}
    except RpcError as e:
        return e.status, _error(request_id, str(e))
    except Exception as e:  # any scoring failure is answered, and the server keeps serving
        # Bad input (a bad value, a deeply nested one): one line; anything else: its traceback.
        bad_input = getattr(e, "error_code", None) == "INVALID_PARAMETER_VALUE"
        if bad_input or isinstance(e, RecursionError):
            print(f"{NOTE} {one_line(e)}", file=sys.stderr, flush=True)
        else:
            traceback.print_exc(file=sys.stderr)
        return 200, _error(request_id, one_line(e))


def _is_id(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float))


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value)
    except (ValueError, TypeError, RecursionError):
        return _kind(value)
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "..."


def _error(request_id: Any, message: str) -> Dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": to_jsonable(request_id),
        "error": {"code": ERROR_CODE, "message": message},
    }


class _Handler(limits.LimitedHandler):
    server_version = "dai-mlflow-rpc"
    # Headers and body leave in two writes; with Nagle on, a keep-alive client's delayed ACK
    # holds the body back ~40 ms per request.
    disable_nagle_algorithm = True

    def do_POST(self) -> None:  # http.server's naming
        if self.path.split("?", 1)[0] != RPC_PATH:
            self.send_refusal(404, f"Not found: {self.path[:_SHOWN]}; POST to {RPC_PATH}")
            return
        body = self.read_body_or_refuse()
        if body is None:
            return
        status, data = answer(self.server.service, body)  # type: ignore[attr-defined]
        self._send(status, data, "application/json")

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] == PING_PATH:
            self._send(200, b"\n", "text/plain")
        else:
            self.send_refusal(405, f"Method not allowed: GET; POST to {RPC_PATH}")

    def send_refusal(self, status: int, message: str) -> None:
        """DAI's error object, the connection closed (a body may be left unread)."""
        data = json.dumps(_error(None, message)).encode("utf-8")
        self.send_unread(status, data, "application/json")

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.access_log:  # type: ignore[attr-defined]
            sys.stderr.write(f"{self.address_string()} - {format % args}\n")


class RpcServer(limits.LimitedHTTPServer):
    """Threaded HTTP server holding the service (scoring itself is serialised)."""

    def __init__(
        self,
        address: Tuple[str, int],
        service: Any,
        access_log: bool = False,
        server_limits: Optional[limits.Limits] = None,
    ) -> None:
        super().__init__(address, _Handler, server_limits)
        self.service = service
        self.access_log = access_log


def build_server(
    service: Any,
    host: str = DEFAULT_HOST,
    port: int = 0,
    server_limits: Optional[limits.Limits] = None,
    access_log: bool = False,
) -> RpcServer:
    """The JSON-RPC HTTP server of ``service`` (bound, not yet serving: ``serve_forever``)."""
    return RpcServer((host, port), service, access_log, server_limits)


# ------------------------------------------------------------------------------ loading
def load_service(model_uri: str, pyfunc: Any = None) -> ScoringService:
    """Load the logged model in this interpreter and build its scorer once.

    Args:
        model_uri: the model (a local folder when ``pyfunc`` is given).
        pyfunc: the model already loaded from that folder (``mlflow.pyfunc.load_model``).

    Raises:
        ModelLoadError: the URI does not resolve, the model is not a dai-mlflow model, no
            license is found, or the scorer fails to start.
    """
    try:
        import mlflow.artifacts
        import mlflow.pyfunc
        from mlflow.models import Model

        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
        if pyfunc is None:
            pyfunc = mlflow.pyfunc.load_model(str(local))
    except Exception as e:
        if _is_dai_mlflow_error(e):  # e.g. no license: its message already says what to do
            raise ModelLoadError(" ".join(str(e).split())) from e
        raise ModelLoadError(f"cannot load {model_uri}: {one_line(e)}") from e
    conf = Model.load(str(local)).flavors.get("python_function", {})
    config = conf.get("config") or {}
    # Imported after load_model: MLflow put the model's own code/ (its dai_mlflow) on sys.path.
    from dai_mlflow.model.pyfunc import (
        CONFIG_INPUT_COLUMNS,
        CONFIG_SCORER_MODULE,
        PIPELINE_ARTIFACT,
        get_scorer,
        parse_params,
        prepare_input,
    )
    from dai_mlflow.model.runtime import in_workdir, scorer_workdir

    module = config.get(CONFIG_SCORER_MODULE)
    artifact = (conf.get("artifacts") or {}).get(PIPELINE_ARTIFACT) or {}
    if not module or not artifact.get("path"):
        raise ModelLoadError(f"{model_uri} is not a dai-mlflow model (no DAI scorer in MLmodel)")
    pipeline_dir = local / artifact["path"]
    types = {str(n): str(t) for n, t in config.get(CONFIG_INPUT_COLUMNS) or []}
    try:
        scorer = get_scorer(str(module), pipeline_dir)
    except Exception as e:  # LicenseNotFoundError, ScorerImportError: one line says which
        raise ModelLoadError(str(e) or one_line(e)) from e
    columns = [str(c) for c in scorer.get_column_names()]
    try:
        own = pyfunc.unwrap_python_model()
    except Exception:  # not a PythonModel: MLflow's predict
        own = None
    if own is None:
        predict, prepare = pyfunc.predict, lambda frame: prepare_input(frame, columns, types)
    else:
        # The model's own predict reorders and coerces (prepare_input) and scores: MLflow's
        # schema checks in front of it would only repeat what that makes true, at a cost.
        def predict(frame: Any, params: Any = None) -> Any:
            return own.predict(None, frame, params)

        def prepare(frame: Any) -> Any:
            return frame

    return ScoringService(
        scorer,
        str(module),
        predict=predict,
        prepare=prepare,
        run_in_workdir=lambda: in_workdir(scorer_workdir(pipeline_dir)),
        parse_flags=parse_params,
    )


def _is_dai_mlflow_error(error: BaseException) -> bool:
    # The model's own dai_mlflow raised it; that class is not importable before the load.
    return any(c.__name__ == "DaiMlflowError" for c in type(error).__mro__)


def serve(
    service: Any,
    host: str,
    port: int,
    access_log: bool = False,
    server_limits: Optional[limits.Limits] = None,
) -> None:
    """Serve ``service`` on ``host:port`` until SIGTERM/SIGINT."""
    server = build_server(service, host, port, server_limits, access_log)

    def _stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _stop)
    bound = server.server_address[1]
    # DAI's server prints this line; scripts that wait for it keep working.
    print(f"HTTP scoring service listening on port {bound}...", flush=True)
    print(f"{NOTE} POST http://{host}:{bound}{RPC_PATH}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


def _serve_here(
    model_uri: str, host: str, port: int, access_log: bool, server_limits: limits.Limits
) -> int:
    warning = limits.bind_warning(host, port)
    if warning:  # said before the model loads: the first thing in the log
        print(f"{NOTE} {warning}", file=sys.stderr, flush=True)
    try:
        service = load_service(model_uri)
    except ModelLoadError as e:
        print(f"{ERROR} {e}", file=sys.stderr, flush=True)
        return 1
    version = ".".join(str(v) for v in sys.version_info[:3])
    print(
        f"{NOTE} serving {service.module_name} with Python {version} ({sys.executable})",
        file=sys.stderr,
        flush=True,
    )
    try:
        serve(service, host, port, access_log, server_limits)
    except OSError as e:  # e.g. the port is taken
        print(f"{ERROR} cannot listen on {host}:{port}: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: ``python -m dai_mlflow.serve.rpc --model-uri URI [--host H] [--port P]``."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m dai_mlflow.serve.rpc",
        description=(
            "Serve a logged DAI model with Driverless AI's JSON-RPC protocol (POST /rpc: "
            "score, score_batch, get_column_names, get_transformed_column_names, "
            "get_target_labels, get_hash), as DAI's http_server.py does."
        ),
    )
    parser.add_argument("--model-uri", required=True, help="models:/NAME@ALIAS, runs:/..., path")
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"(default {DEFAULT_HOST}; another address warns: no authentication, no TLS)",
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"(default {DEFAULT_PORT}; 0: any free)"
    )
    parser.add_argument(
        "--env-manager",
        choices=ENV_MANAGERS,
        default=DEFAULT_ENV_MANAGER,
        help=(
            "uv/virtualenv: restore the model's env as `mlflow models serve` does and run "
            "there; local: this interpreter is the model's env (default uv)"
        ),
    )
    parser.add_argument("--access-log", action="store_true", help="log each request to stderr")
    limits.add_arguments(parser)
    args = parser.parse_args(argv)
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be 0..65535, got {args.port}")
    try:
        server_limits = limits.from_arguments(args)
    except limits.LimitsError as e:
        parser.error(str(e))
    if args.env_manager == "local":
        return _serve_here(args.model_uri, args.host, args.port, args.access_log, server_limits)
    from dai_mlflow.errors import DaiMlflowError
    from dai_mlflow.serve.server import run_model_server, run_rpc_in_model_env

    extra = limits.argv_of(server_limits)
    try:
        # The model's own server (/rpc beside /invocations, requests batched); this file as a
        # script for models logged before it existed.
        if not args.access_log:
            code = run_model_server(args.model_uri, args.host, args.port, args.env_manager, extra)
            if code is not None:
                return code
        extra += ["--access-log"] if args.access_log else []
        return run_rpc_in_model_env(
            Path(__file__), args.model_uri, args.host, args.port, args.env_manager, extra
        )
    except DaiMlflowError as e:
        print(f"{ERROR} {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
