"""Fixtures of the deploy tests (loaded by tests/conftest.py).

- ``fake_workspace``: a loopback HTTP server that answers the Databricks Model Serving REST API
  as a workspace does (``GET``/``POST /api/2.0/serving-endpoints[/{name}]``,
  ``PUT .../{name}/config``), with ``DATABRICKS_HOST``/``DATABRICKS_TOKEN`` pointing the real
  ``databricks-sdk`` at it: only HTTP is replaced, the SDK and our code run as they would against
  a workspace. A config update is ``IN_PROGRESS`` on the first poll and done on the next, or
  ``UPDATE_FAILED`` when the test sets ``fail_next_update``. Every request is recorded.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, Iterator, List, Optional

import pytest

API = "/api/2.0/serving-endpoints"
TOKEN = "dapi-fake-token-for-tests"


@dataclass
class Recorded:
    method: str
    path: str
    headers: Dict[str, str]
    body: Optional[Dict[str, Any]]


@dataclass
class FakeWorkspace:
    """What the fake workspace holds and saw."""

    url: str
    requests: List[Recorded] = field(default_factory=list)
    endpoints: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    pending: Dict[str, Dict[str, Any]] = field(default_factory=dict)  # name -> config in progress
    fail_next_update: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: Optional[str] = None) -> List[Recorded]:
        return [r for r in self.requests if method is None or r.method == method]


def _endpoint(name: str, config: Dict[str, Any], ready: str, update: str) -> Dict[str, Any]:
    return {
        "name": name,
        "id": f"id-{name}",
        "config": {
            "served_entities": [
                {**e, "state": {"deployment": "DEPLOYMENT_READY"}}
                for e in config.get("served_entities", [])
            ],
            "traffic_config": config.get("traffic_config"),
            "config_version": 1,
        },
        "state": {"ready": ready, "config_update": update},
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _ws(self) -> FakeWorkspace:
        return self.server.workspace  # type: ignore[attr-defined]

    def _record(self) -> Optional[Dict[str, Any]]:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        self._ws().requests.append(
            Recorded(self.command, self.path, dict(self.headers.items()), body)
        )
        return body

    def _send(self, status: int, payload: Dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _not_found(self, name: str) -> None:
        msg = f"Endpoint with name '{name}' does not exist."
        self._send(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": msg})

    def do_GET(self) -> None:
        self._record()
        ws = self._ws()
        if not self.path.startswith(API + "/"):
            self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": self.path})
            return
        name = self.path[len(API) + 1 :]
        with ws.lock:
            if name not in ws.endpoints:
                self._not_found(name)
                return
            current = ws.endpoints[name]
            if name in ws.pending:  # first poll: in progress; the next one: done or failed
                pending = ws.pending.pop(name)
                if pending.pop("_failed", False):
                    current["state"] = {"ready": current["state"]["ready"],
                                        "config_update": "UPDATE_FAILED"}  # fmt: skip
                else:
                    ws.endpoints[name] = _endpoint(name, pending, "READY", "NOT_UPDATING")
                updating = dict(current)
                updating["state"] = {"ready": current["state"]["ready"],
                                     "config_update": "IN_PROGRESS"}  # fmt: skip
                self._send(200, updating)
                return
            self._send(200, current)

    def do_POST(self) -> None:
        body = self._record() or {}
        ws = self._ws()
        if self.path != API:
            self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": self.path})
            return
        name = body["name"]
        with ws.lock:
            if name in ws.endpoints:
                self._send(400, {"error_code": "RESOURCE_ALREADY_EXISTS", "message": name})
                return
            ws.endpoints[name] = _endpoint(name, {}, "NOT_READY", "IN_PROGRESS")
            ws.pending[name] = dict(body["config"])
            self._send(200, ws.endpoints[name])

    def do_PUT(self) -> None:
        body = self._record() or {}
        ws = self._ws()
        if not (self.path.startswith(API + "/") and self.path.endswith("/config")):
            self._send(404, {"error_code": "ENDPOINT_NOT_FOUND", "message": self.path})
            return
        name = self.path[len(API) + 1 : -len("/config")]
        with ws.lock:
            if name not in ws.endpoints:
                self._not_found(name)
                return
            pending = dict(body)
            if ws.fail_next_update:
                pending["_failed"] = True
                ws.fail_next_update = False
            ws.pending[name] = pending
            self._send(200, ws.endpoints[name])

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_workspace(monkeypatch, tmp_path) -> Iterator[FakeWorkspace]:
    """A fake Databricks workspace on loopback, the SDK pointed at it by the environment."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    ws = FakeWorkspace(f"http://127.0.0.1:{server.server_address[1]}")
    server.workspace = ws  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for var in ("DATABRICKS_CLIENT_ID", "DATABRICKS_CLIENT_SECRET", "DATABRICKS_CONFIG_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("DATABRICKS_HOST", ws.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-databrickscfg"))
    try:
        yield ws
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------ load
@dataclass
class Answer:
    client: int
    version: str
    error: str  # "" when the answer was HTTP 200 and equal to that version's validated answers


class LoadClients:
    """Clients that POST validation-sample rows to ``/invocations`` until stopped.

    Each answer is checked against the validated predictions of the version that the proxy's
    ``X-Dai-Mlflow-Model-Version`` header names: an answer that matches no single version (a
    mix) or fails in any way is an error.
    """

    def __init__(self, url: str, samples: Dict[str, Any], clients: int = 4) -> None:
        self.url = url
        self.samples = samples  # version -> smoke.Sample with predictions
        self.clients = clients
        self.answers: List[Answer] = []
        self._stop = threading.Event()
        self._threads: List[threading.Thread] = []
        self._lock = threading.Lock()

    def _check(self, rows: List[int], version: str, resp: Any) -> str:
        import numpy as np

        if resp.status_code != 200:
            return f"HTTP {resp.status_code}: {resp.text[:200]}"
        sample = self.samples.get(version)
        if sample is None:
            return f"answered by unknown version {version!r}"
        got = [[p[c] for c in sample.output_columns] for p in resp.json()["predictions"]]
        want = [sample.predictions[i] for i in rows]
        if not np.allclose(np.asarray(got, dtype=float), np.asarray(want), rtol=0, atol=1e-9):
            return f"answer differs from version {version}'s validated predictions"
        return ""

    def _run(self, client: int) -> None:
        import requests

        session = requests.Session()
        any_sample = next(iter(self.samples.values()))
        n = len(any_sample.data)
        i = client
        while not self._stop.is_set():
            size = 1 if i % 3 else 10
            rows = [(i + k) % n for k in range(size)]
            body = {"dataframe_split": {"columns": any_sample.columns,
                                        "data": [any_sample.data[r] for r in rows]}}  # fmt: skip
            try:
                resp = session.post(self.url + "/invocations", json=body, timeout=120)
                version = resp.headers.get("X-Dai-Mlflow-Model-Version", "")
                error = self._check(rows, version, resp)
            except Exception as e:  # a refused or cut connection is a failed request
                version, error = "", f"{type(e).__name__}: {e}"
            with self._lock:
                self.answers.append(Answer(client, version, error))
            i += self.clients

    def start(self) -> LoadClients:
        for c in range(self.clients):
            t = threading.Thread(target=self._run, args=(c,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=150)

    def count(self, version: Optional[str] = None) -> int:
        with self._lock:
            return sum(1 for a in self.answers if version is None or a.version == version)

    def wait_for(self, version: str, n: int, timeout: float = 120.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while self.count(version) < n and time.monotonic() < deadline:
            time.sleep(0.05)
