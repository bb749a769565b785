"""One worker process of the model's server: the model loaded once, every route answered.

Routes: ``POST /invocations`` (MLflow's protocol; merged JSON bodies are predicted together,
anything else goes through MLflow's own ``scoring_server.invocations``), ``POST /rpc`` (DAI's
JSON-RPC, ``score``/``score_batch`` calls merged), ``GET /ping``, ``/health``, ``/version``,
``/metrics``. A merged call that fails is retried one request at a time.
See docs/serving.md, section 0.
Over 400 lines: the routes share the worker's parsing and merging state.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

from . import MODEL_NAME_ENV, MODEL_VERSION_ENV
from .batching import Batcher, Item, RequestTimeout
from .http import JSON, HttpServer, Request

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
ROUTES = ("/invocations", "/rpc", "/ping", "/health", "/version", "/metrics")
RPC_THREADS = 64
_SPLIT_KEYS = {"columns", "data"}


class ServerConfig:
    """What a worker needs from the command line."""

    def __init__(
        self,
        model_path: str,
        max_batch_rows: int = 1000,
        max_wait_ms: float = 2.0,
        batching: bool = True,
        log_requests: Optional[str] = None,
        body_limit: int = 64 * 1024 * 1024,
        timeout: Optional[float] = None,
        connection_timeout: float = 60.0,
        max_connections: int = 1024,
    ) -> None:
        self.model_path = model_path
        self.max_batch_rows = max_batch_rows
        self.max_wait_ms = max_wait_ms
        self.batching = batching
        self.log_requests = log_requests
        self.body_limit = body_limit
        self.timeout = timeout
        self.connection_timeout = connection_timeout
        self.max_connections = max_connections


def error_json(status: int, message: str) -> bytes:
    """MLflow's error body for answers the server gives itself."""
    code = "BAD_REQUEST" if 400 <= status < 500 else "INTERNAL_ERROR"
    if status == 404:
        code = "ENDPOINT_NOT_FOUND"
    return json.dumps({"error_code": code, "message": message}).encode()


def model_info(model_path: str) -> Dict[str, str]:
    """Name, version and DAI version of the model folder, for ``dai_mlflow_model_info``."""
    import mlflow
    from mlflow.models import Model

    info = {
        "model_name": "",
        "model_version": "",
        "dai_version": "",
        "scorer_module": "",
        "mlflow_version": mlflow.__version__,
        "python_version": ".".join(str(v) for v in sys.version_info[:3]),
    }
    meta = Model.load(model_path).metadata or {}
    info["dai_version"] = str(meta.get("dai_version", ""))
    info["scorer_module"] = str(meta.get("scorer_module", ""))
    registered = Path(model_path) / "registered_model_meta"
    if registered.is_file():  # MLflow writes it when a models:/ URI is downloaded
        for line in registered.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model_name", "model_version"):
                info[key.strip()] = value.strip().strip("'\"")
    info["model_name"] = os.environ.get(MODEL_NAME_ENV) or info["model_name"]
    info["model_version"] = os.environ.get(MODEL_VERSION_ENV) or info["model_version"]
    return info


def fast_item(body: bytes, content_type: Optional[str]) -> Optional[Tuple[Any, int, Any]]:
    """``(key, rows, payload)`` for a JSON body that can share a scorer call, else None."""
    if content_type is None:
        return None
    mime, _, rest = content_type.partition(";")
    if mime.strip() != "application/json" or (
        rest.strip() and rest.replace(" ", "").lower() != "charset=utf-8"
    ):
        return None
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if type(data) is not dict:
        return None
    params = data.get("params")
    names = [k for k in data if k != "params"]
    if len(names) != 1 or names[0] not in FORMATS:
        return None
    if params is not None and type(params) is not dict:
        return None
    fmt = names[0]
    value = data[fmt]
    pkey = json.dumps(params, sort_keys=True) if params else ""
    if fmt == "dataframe_split":
        if type(value) is not dict or value.keys() != _SPLIT_KEYS:
            return None
        columns, rows = value["columns"], value["data"]
        if type(columns) is not list or type(rows) is not list or not rows:
            return None
        width = len(columns)
        if not all(type(c) is str for c in columns) or not all(
            type(r) is list and len(r) == width for r in rows
        ):
            return None
        return (fmt, tuple(columns), pkey), len(rows), (rows, params, body, content_type)
    if type(value) is not list or not value or type(value[0]) is not dict:
        return None
    first = value[0].keys()
    if not all(type(r) is dict and r.keys() == first for r in value):
        return None
    return (fmt, tuple(first), pkey), len(value), (value, params, body, content_type)


class Worker:
    """The model, the batcher and the HTTP server of one worker process."""

    def __init__(self, config: ServerConfig, metrics: Any, inference_log: Any = None) -> None:
        import mlflow.pyfunc
        from mlflow.pyfunc import scoring_server

        from dai_mlflow.serve import rpc

        self.config = config
        self.metrics = metrics
        self.log = inference_log
        self.scoring_server = scoring_server
        # MLflow 3.x's server hands invocations the body's bytes, 2.x's the decoded text; the
        # same here, so that error messages read alike.
        self.body_bytes = int(mlflow.__version__.split(".")[0]) >= 3
        self.model = mlflow.pyfunc.load_model(config.model_path, suppress_warnings=True)
        self.schema = self.model.metadata.get_input_schema()
        from dai_mlflow.model.hooks.stdin_server import schema_columns

        self.types = schema_columns(self.model)
        self.kinds = dict(self.types)
        self.required = set(self.schema.required_input_names()) if self.schema else set()
        try:  # dai-mlflow's pyfunc reorders and coerces columns itself
            self.direct = self.model.unwrap_python_model()
        except Exception:  # not a PythonModel: MLflow's path only
            self.direct = None
        self.version = mlflow.__version__.encode()
        self.service = rpc.load_service(config.model_path, pyfunc=self.model)
        self.rpc = rpc
        self._warm_up()
        self.batcher = Batcher(
            self._run,
            max_rows=config.max_batch_rows,
            max_wait=config.max_wait_ms / 1000.0,
            enabled=config.batching,
            timeout=config.timeout,
        )
        self.loop: Any = None
        self.http: Optional[HttpServer] = None
        self._answers: List[Tuple[Request, int, bytes, str]] = []
        self._rpc_pool = ThreadPoolExecutor(RPC_THREADS, thread_name_prefix="rpc")
        self.batched_rpc = BatchedRpc(self.service, self.batcher)

    def _warm_up(self) -> None:
        """Score the model's input example once: the first client does not pay for imports."""
        from mlflow.models import Model

        path = self.config.model_path
        example = Model.load(path).load_input_example(path)
        if example is not None:
            self.model.predict(example)

    # ---------------------------------------------------------------- serving
    async def serve(self, sock: Any) -> None:
        """Serve on ``sock`` until cancelled."""
        self.loop = asyncio.get_running_loop()
        self.http = HttpServer(
            self.route,
            error_json,
            self._answered,
            body_limit=self.config.body_limit,
            request_timeout=self.config.connection_timeout,
            keepalive_timeout=self.config.connection_timeout,
            max_connections=self.config.max_connections,
        )
        self.batcher.start()
        await self.http.start(sock)
        await asyncio.Event().wait()

    def _answered(self, request: Optional[Request], status: int, seconds: float) -> None:
        route = request.path if request is not None and request.path in ROUTES else "other"
        error = request is not None and request.rpc_error
        self.metrics.answered(route, status, seconds, error)

    def route(self, request: Request) -> None:
        """Dispatch one request (event loop thread)."""
        path, method = request.path, request.method
        assert self.http is not None
        self.batcher.clients = len(self.http.connections)
        if path == "/invocations":
            if method != "POST":
                return request.respond(405, error_json(405, "Method not allowed; POST"))
            return self._invocations(request)
        if path == "/rpc":
            if method != "POST":
                message = f"Method not allowed: {method}; POST to /rpc"
                return request.respond(405, self._rpc_error(message))
            return self._rpc(request)
        if method != "GET":
            if method == "POST":
                not_found = f"Not found: {path}; POST to /invocations or /rpc"
                return request.respond(404, error_json(404, not_found))
            return request.respond(405, error_json(405, f"Method not allowed: {method}"))
        if path in ("/ping", "/health"):
            return request.respond(200, b"\n")
        if path == "/version":
            return request.respond(200, self.version)
        if path == "/metrics":
            from .metrics import CONTENT_TYPE

            return request.respond(200, self.metrics.render(), CONTENT_TYPE)
        return request.respond(404, error_json(404, f"Not found: {path}"))

    def _invocations(self, request: Request) -> None:
        content_type = request.headers.get("content-type")
        fast = fast_item(request.body, content_type) if self.config.batching else None
        if fast is None:
            payload = ("solo", request.body, content_type)
            item = Item(None, 1, payload, self._answer_to(request))
        else:
            key, rows, data = fast
            item = Item(key, rows, data, self._answer_to(request))
        item.arrived = request.started
        self.batcher.submit(item)

    def _answer_to(self, request: Request) -> Callable[[Any, Optional[BaseException]], None]:
        def done(result: Any, error: Optional[BaseException]) -> None:
            if error is not None:
                status = 504 if isinstance(error, RequestTimeout) else 500
                result = (status, error_json(status, str(error) or type(error).__name__), JSON)
            self._answers.append((request, *result))

        return done

    # ---------------------------------------------------------------- the scorer thread
    def _run(self, items: List[Item]) -> None:
        try:
            first = items[0]
            if first.key is None:
                for item in items:
                    if isinstance(item.payload, tuple) and item.payload[0] == "solo":
                        item.done(self._solo(item.payload[1], item.payload[2]), None)
                    else:
                        self._run_rpc([item])
            elif first.key[0] == "rpc":
                self._run_rpc(items)
            else:
                self._run_invocations(items)
        finally:
            answers, self._answers = self._answers, []
            if answers:
                self.loop.call_soon_threadsafe(_respond_all, answers)

    def _run_invocations(self, items: List[Item]) -> None:
        import pandas as pd

        fmt, columns, _ = cast("Tuple[Any, ...]", items[0].key)  # keyed: see _run
        params = items[0].payload[1]
        rows: List[Any] = []
        for item in items:
            rows.extend(item.payload[0])
        try:
            frame = self._direct_frame(fmt, columns, rows, params)
            with _timed(self.metrics, len(rows)):
                if frame is not None:
                    result = self.direct.predict(None, frame, params)
                else:  # MLflow's own parsing and schema checks, for the merged body
                    merged = {"columns": list(columns), "data": rows}
                    frame = self.scoring_server.infer_and_parse_data(
                        {fmt: merged if fmt == "dataframe_split" else rows}, self.schema
                    )
                    result = self.model.predict(frame, params=params)
            if not isinstance(result, pd.DataFrame) or len(result) != len(rows):
                raise ValueError("the model's answer does not have one row per input row")
        except Exception:  # retried one by one: each gets MLflow's own answer
            for item in items:
                item.done(self._solo(item.payload[2], item.payload[3]), None)
            return
        records = prediction_records(result)
        start = 0
        for item in items:
            end = start + item.rows
            body = '{"predictions": [' + ", ".join(records[start:end]) + "]}"
            item.done((200, body.encode(), JSON), None)
            start = end
        if self.log is not None:
            self.log.add(frame, result)

    def _direct_frame(self, fmt: str, columns: Sequence[str], rows: List[Any], params: Any) -> Any:
        """The merged rows as a frame the pyfunc can score without MLflow's checks, or None.

        Only when MLflow's schema checks would pass unchanged: every signature column present,
        numbers (at least one) in numeric columns, text or null in text columns, no params
        beyond the two boolean flags. Anything else takes MLflow's own path, so answers stay
        MLflow's. Values are checked as sent and each column is built once with its final
        type (float64 or object), so the pyfunc's own coercion finds nothing left to do.
        """
        import numpy as np
        import pandas as pd

        if self.direct is None or not self.types:
            return None
        if params and not all(
            k in ("pred_contribs", "output_margin") and type(v) is bool for k, v in params.items()
        ):
            return None
        if not self.required.issubset(columns):
            return None
        if fmt == "dataframe_split":
            values = list(zip(*rows))
        else:
            values = [tuple(row[c] for row in rows) for c in columns]
        data = {}
        for name, column in zip(columns, values):
            kind = self.kinds.get(name)
            found = set(map(type, column))  # the types as sent, in one pass in C
            if kind in ("double", "float"):
                if not found <= _NUMBER_TYPES or found <= {type(None)}:
                    return None
                data[name] = np.array(column, dtype="float64")
            elif kind == "string":
                if not found <= _TEXT_TYPES:
                    return None
                data[name] = np.array(column, dtype=object)
            elif kind is None:  # not in the signature: passed on as sent
                data[name] = pd.Series(column, dtype=None if column else object).to_numpy()
            else:  # integers, booleans, dates, ...: MLflow's own checks decide
                return None
        return pd.DataFrame(data, columns=list(columns))

    def _solo(self, body: bytes, content_type: Optional[str]) -> Tuple[int, bytes, str]:
        """One request through MLflow's own ``invocations``: its answer, status and type."""
        from mlflow.exceptions import MlflowException

        server = self.scoring_server
        mime = (content_type or "").split(";", 1)[0].strip()
        if mime not in server.CONTENT_TYPES:
            message = (
                "This predictor only supports the following content types:"
                f" Types: {server.CONTENT_TYPES}. Got '{content_type}'."
            )
            return 415, message.encode(), "text/plain"
        data: Any = body
        if mime != "application/vnd.apache.parquet" and not self.body_bytes:
            try:
                data = body.decode("utf-8")
            except UnicodeDecodeError as e:
                message = f"Ensure that input is a valid UTF-8 encoded string. Error: '{e!r}'"
                return 400, error_json(400, message), JSON
        try:
            with _timed(self.metrics, None):
                answer = server.invocations(data, content_type, self.model, self.schema)
        except MlflowException as e:
            return e.get_http_status_code(), e.serialize_as_json().encode(), JSON
        except RecursionError:
            return 400, error_json(400, "Bad request: the JSON body is nested too deeply"), JSON
        except Exception as e:  # answered like MLflow's server, which goes on
            return 500, error_json(500, f"{type(e).__name__}: {e}"), JSON
        if answer.status == 200 and self.log is not None:
            self.log.add_raw(data, content_type, answer.response)
        return answer.status, answer.response.encode(), answer.mimetype

    def _run_rpc(self, items: List[Item]) -> None:
        self.batched_rpc.run(items, self.metrics, self.log)

    # ---------------------------------------------------------------- /rpc
    def _rpc(self, request: Request) -> None:
        """A plain ``score``/``score_batch`` call goes to the batcher from the event loop and is
        answered from the scorer thread; anything else (and any failure) runs ``rpc.answer`` in
        the RPC pool, so its answer is exactly the one the JSON-RPC server gives."""
        fast = rpc_item(request.body) if self.config.batching else None
        if fast is None:
            self._rpc_in_pool(request)
            return
        request_id, method, rows, flags, key = fast
        service = self.service
        if method == "score":

            def alone() -> Any:
                return [service.score(rows[0], *flags)]
        else:

            def alone() -> Any:
                return service.score_batch(rows, *flags)

        def done(result: Any, error: Optional[BaseException]) -> None:  # the scorer thread
            body = None
            if error is None:
                value = result[0] if method == "score" else result
                answer = {"jsonrpc": "2.0", "id": request_id, "result": None}
                with contextlib.suppress(ValueError, TypeError, RecursionError):
                    answer["result"] = self.rpc.to_jsonable(value)
                    body = json.dumps(answer, allow_nan=False).encode("utf-8")
            if body is None:  # its own error (or result), as the JSON-RPC server gives it
                self.loop.call_soon_threadsafe(self._rpc_in_pool, request)
            else:
                self._answers.append((request, 200, body, JSON))

        item = Item(key, len(rows), (rows, flags, alone), done)
        item.arrived = request.started
        self.batcher.submit(item)

    def _rpc_in_pool(self, request: Request) -> None:
        future = self.loop.run_in_executor(
            self._rpc_pool, self.rpc.answer, self.batched_rpc, request.body
        )
        future.add_done_callback(lambda f: self._rpc_done(request, f))

    def _rpc_done(self, request: Request, future: Any) -> None:
        try:
            status, body = future.result()
        except BaseException as e:  # answer never raises; be safe anyway
            status, body = 500, self._rpc_error(f"Internal error: {type(e).__name__}: {e}")
        # An error object (DAI answers most errors with HTTP 200) counts as an error.
        request.rpc_error = status != 200 or b'"error": {"code"' in body
        request.respond(status, body)

    def _rpc_error(self, message: str) -> bytes:
        error = {"code": self.rpc.ERROR_CODE, "message": message}
        return json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()


_NUMBER_TYPES = {int, float, type(None)}
_TEXT_TYPES = {str, type(None)}
_RPC_PARAMS = {"score": "row", "score_batch": "rows"}
_RPC_FLAGS = ("output_margin", "pred_contribs")


def rpc_item(body: bytes) -> Optional[Tuple[Any, str, List[Any], Tuple[Any, Any], Any]]:
    """``(id, method, rows, flags, batch key)`` of a well-formed ``score``/``score_batch``
    request whose rows can share a scorer call, else None (``rpc.answer`` then reads it,
    errors and all). The key is :class:`BatchedRpc`'s: flags as sent."""
    try:
        request = json.loads(body.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if type(request) is not dict or "id" not in request:
        return None
    request_id, method, params = request["id"], request.get("method"), request.get("params")
    if request_id is not None and type(request_id) not in (str, int, float):
        return None
    if method not in _RPC_PARAMS or type(params) is not dict:
        return None
    name = _RPC_PARAMS[method]
    if name not in params or not set(params) <= {name, *_RPC_FLAGS}:
        return None
    rows = [params[name]] if method == "score" else params[name]
    if type(rows) is not list or not rows:
        return None
    flags = (params.get("output_margin", False), params.get("pred_contribs", False))
    try:
        key = ("rpc", json.dumps(flags))
    except (TypeError, ValueError):
        return None
    return request_id, method, rows, flags, key


def prediction_records(result: Any) -> List[str]:
    """Each row of the model's output frame as MLflow's JSON record text.

    The text ``json.dumps`` writes for ``frame.to_dict(orient="records")`` (what MLflow's server
    sends), made with one format string per frame when every value is a finite float: most of
    the time of a large answer otherwise goes to building and encoding a dict per row.
    """
    import numpy as np

    names = [str(c) for c in result.columns]
    if len(set(names)) == len(names) and all(k.kind == "f" for k in result.dtypes):
        values = result.to_numpy(dtype=float)
        if np.isfinite(values).all():
            template = "{" + ", ".join(json.dumps(n) + ": %r" for n in names) + "}"
            return [template % row for row in map(tuple, values.tolist())]
    return [json.dumps(dict(zip(result.columns, row))) for row in result.values.tolist()]


class _timed:
    """Observe one scorer call's rows and seconds."""

    def __init__(self, metrics: Any, rows: Optional[int]) -> None:
        self.metrics = metrics
        self.rows = rows

    def __enter__(self) -> None:
        import time

        self.started = time.monotonic()

    def __exit__(self, *exc: Any) -> None:
        import time

        self.metrics.call_seconds.observe(time.monotonic() - self.started)
        if self.rows is not None:
            self.metrics.call_rows.observe(self.rows)


def _respond_all(answers: Sequence[Tuple[Request, int, bytes, str]]) -> None:
    for request, status, body, content_type in answers:
        request.respond(status, body, content_type)


class BatchedRpc:
    """DAI's JSON-RPC methods with ``score``/``score_batch`` merged across clients.

    ``handle`` calls :meth:`call` from an RPC thread; scoring methods queue their rows and wait
    for the scorer thread; the rest go to the model's ``ScoringService`` directly.
    """

    def __init__(self, service: Any, batcher: Batcher) -> None:
        self.service = service
        self.batcher = batcher

    def call(self, method: str, params: Dict[str, Any]) -> Any:
        """Run ``method`` with by-name ``params`` (wrong names raise ``TypeError``, as in DAI)."""
        if method in ("score", "score_batch"):
            return getattr(self, method)(**params)
        return self.service.call(method, params)

    def score(self, row: Any, output_margin: Any = False, pred_contribs: Any = False) -> Any:
        """One row, scored with other clients' rows in one ``score_batch``."""

        def alone() -> Any:
            return [self.service.score(row, output_margin, pred_contribs)]

        return self._wait((output_margin, pred_contribs), [row], alone)[0]

    def score_batch(
        self, rows: Any, output_margin: Any = False, pred_contribs: Any = False
    ) -> List[List[Any]]:
        """Rows, scored with other clients' rows in one ``score_batch``."""

        def alone() -> Any:
            return self.service.score_batch(rows, output_margin, pred_contribs)

        if not isinstance(rows, list) or not rows:
            return alone()
        return self._wait((output_margin, pred_contribs), rows, alone)

    def _wait(self, flags: Tuple[Any, Any], rows: List[Any], alone: Callable[[], Any]) -> Any:
        event = threading.Event()
        box: List[Any] = [None, None]

        def done(result: Any, error: Optional[BaseException]) -> None:
            box[0], box[1] = result, error
            event.set()

        try:  # flags as sent: only requests with equal flags share a call
            key: Any = ("rpc", json.dumps(flags))
        except (TypeError, ValueError):
            key = None
        self.batcher.submit(Item(key, len(rows), (rows, flags, alone), done))
        event.wait()
        if box[1] is not None:
            raise box[1]
        return box[0]

    def run(self, items: List[Item], metrics: Any, log: Any) -> None:
        """Score ``items`` (scorer thread): merged, or one by one when the merged call fails."""
        output_margin, pred_contribs = items[0].payload[1]
        rows: List[Any] = []
        for item in items:
            rows.extend(item.payload[0])
        if items[0].key is not None:
            try:
                with _timed(metrics, len(rows)):
                    result = self.service.score_batch(rows, output_margin, pred_contribs)
                if len(result) != len(rows):
                    raise ValueError("score_batch did not answer one row per row")
            except Exception:  # each alone below: its own error, as alone
                result = None
            if result is not None:
                start = 0
                for item in items:
                    item.done(result[start : start + item.rows], None)
                    start += item.rows
                return
        for item in items:
            try:
                with _timed(metrics, item.rows):
                    answer = item.payload[2]()
            except BaseException as e:  # handed to the waiting RPC thread
                item.done(None, e)
            else:
                item.done(answer, None)


def now_utc() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)
