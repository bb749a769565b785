"""The optional inference log: served rows and their outputs, as a date-partitioned parquet table.

``--log-requests DIR``: each worker appends to ``DIR/date=YYYY-MM-DD/part-<pid>-<n>.parquet``
(written under a hidden name, then renamed) with the lifecycle batch table's columns. Scoring
threads only append to a bounded queue; a background thread writes. A full queue or a failed
write drops rows and counts them: nothing here can fail or slow a request beyond the append.
See docs/serving.md, "Inference log".
"""

from __future__ import annotations

import datetime
import itertools
import os
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

MAX_PENDING_ROWS = 200_000
FLUSH_ROWS = 20_000
FLUSH_SECONDS = 5.0


class InferenceLog:
    """Background writer of one worker (:meth:`start`, :meth:`add`, :meth:`close`)."""

    def __init__(
        self,
        folder: str,
        info: Dict[str, str],
        metrics: Any,
        max_pending_rows: int = MAX_PENDING_ROWS,
        flush_rows: int = FLUSH_ROWS,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        self.folder = Path(folder)
        self.metrics = metrics
        self.max_pending_rows = max_pending_rows
        self.flush_rows = flush_rows
        self.flush_seconds = flush_seconds
        name, version = info.get("model_name", ""), info.get("model_version", "")
        self.meta = {
            "model_name": name,
            "model_version": version,
            "model_uri": f"models:/{name}/{version}" if name and version else "",
        }
        self._pending: List[Tuple[str, Any, Any, datetime.datetime]] = []
        self._rows = 0
        self._cond = threading.Condition()
        self._closed = False
        self._warned = False
        self._seq = itertools.count()
        self._thread = threading.Thread(target=self._loop, name="inference-log", daemon=True)

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def add(self, frame: Any, result: Any) -> None:
        """Queue a scored frame and its output frame (same length)."""
        self._queue("frame", frame, result, len(frame))

    def add_raw(self, data: Any, content_type: Optional[str], response: str) -> None:
        """Queue a request body and MLflow's answer text (parsed in the writer thread)."""
        self._queue("raw", (data, content_type), response, 1)

    def _queue(self, kind: str, inputs: Any, outputs: Any, rows: int) -> None:
        stamp = datetime.datetime.now(datetime.timezone.utc)
        with self._cond:
            if self._closed or self._rows + rows > self.max_pending_rows:
                self.metrics.log_dropped.inc(rows)
                return
            self._pending.append((kind, inputs, outputs, stamp))
            self._rows += rows
            if self._rows >= self.flush_rows:
                self._cond.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued and stop."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._closed and self._rows < self.flush_rows:
                    self._cond.wait(self.flush_seconds)
                pending, self._pending = self._pending, []
                rows, self._rows = self._rows, 0
                closed = self._closed
            if pending:
                try:
                    self._write(pending)
                except Exception as e:  # logging never stops serving
                    self.metrics.log_dropped.inc(rows)
                    if not self._warned:
                        self._warned = True
                        print(f"[dai-mlflow] inference log: write failed: {e}", file=sys.stderr)
            if closed:
                return

    def _write(self, pending: List[Tuple[str, Any, Any, datetime.datetime]]) -> None:
        import pandas as pd

        frames: Dict[str, List[Any]] = {}
        for kind, inputs, outputs, stamp in pending:
            frame = self._frame(kind, inputs, outputs)
            if frame is None or not len(frame):
                continue
            frame["scored_at"] = stamp.replace(tzinfo=None)
            for key, value in self.meta.items():
                frame[key] = value
            frames.setdefault(stamp.strftime("%Y-%m-%d"), []).append(frame)
        for day, parts in frames.items():
            table = pd.concat(parts, ignore_index=True, sort=False)
            self._write_day(day, table)
            self.metrics.log_rows.inc(len(table))

    def _frame(self, kind: str, inputs: Any, outputs: Any) -> Any:
        import pandas as pd

        if kind == "raw":
            inputs = self._parse(*inputs)
            if inputs is None:
                return None
            import json

            answer = json.loads(outputs)
            outputs = pd.DataFrame(answer.get("predictions") if isinstance(answer, dict) else [])
        if not isinstance(inputs, pd.DataFrame) or not isinstance(outputs, pd.DataFrame):
            return None
        if len(inputs) != len(outputs):
            return None
        left = inputs.reset_index(drop=True)
        right = outputs.reset_index(drop=True)
        right = right[[c for c in right.columns if c not in left.columns]]
        return pd.concat([left, right], axis=1)

    @staticmethod
    def _parse(data: Any, content_type: Optional[str]) -> Any:
        import io

        from mlflow.pyfunc import scoring_server

        mime = (content_type or "").split(";", 1)[0].strip()
        if isinstance(data, bytes):  # MLflow 3.x's server parses the body's bytes
            data = data.decode("utf-8", errors="replace")
        if mime == "text/csv":
            return scoring_server.parse_csv_input(io.StringIO(data))
        if mime == "application/json":
            import json

            body = json.loads(data)
            body.pop("params", None)
            return scoring_server.infer_and_parse_data(body)
        return None

    def _write_day(self, day: str, table: Any) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        folder = self.folder / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        name = f"part-{os.getpid()}-{next(self._seq):06d}-{datetime.datetime.now():%H%M%S}.parquet"
        try:
            arrow = pa.Table.from_pandas(table, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in a column: keep them as text
            mixed = table.select_dtypes(include="object").columns
            table = table.astype(dict.fromkeys(mixed, str))
            arrow = pa.Table.from_pandas(table, preserve_index=False)
        hidden = folder / f".{name}.tmp"
        pq.write_table(arrow, str(hidden))
        os.replace(hidden, folder / name)
