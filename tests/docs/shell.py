"""Run documented commands as a user would: a fresh login shell in a copy of the checkout.

- :func:`user_env`: this machine's environment minus everything a test run or an activated venv
  adds (``VIRTUAL_ENV``, venv folders on ``PATH``, ``MLFLOW_*``, ``DRIVERLESS_AI_*``,
  ``DAI_MLFLOW_*``, ``PYTHONPATH``, ...). Only where builds are cached is added back
  (``DAI_MLFLOW_ENV_ROOT``, ``MLFLOW_ENV_ROOT``: the test caches, so no env is built twice),
  the suite's JVM options (``SPARK_SUBMIT_OPTS``), and where a local endpoint keeps its state.
- :func:`user_checkout`: the checkout's tracked (and new, not ignored) files copied to
  ``tests/.cache/docs/checkout`` (or another name there), outputs of earlier runs removed.
  Its ``venvs/`` is its own (``make venvs`` there builds them once, then reuses them), so
  nothing the commands write lands in the real checkout.
- :class:`Session`: commands of one document in order; ``source``/``export`` lines are kept
  and replayed before each later command, as in the reader's terminal.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from filelock import FileLock

from tests.docs.blocks import REPO_ROOT, Command

CACHE = REPO_ROOT / "tests" / ".cache"
DOCS_CACHE = CACHE / "docs"
CHECKOUT = DOCS_CACHE / "checkout"
# Left in the copy between runs: the venvs `make venvs` built there (reused while their key holds).
_KEPT = ("venvs",)
_DROPPED_PREFIXES = ("MLFLOW_", "DRIVERLESS_AI_", "DAI_MLFLOW_", "PYSPARK_", "PYTEST_", "SPARK_")
_DROPPED = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PYTHON_DOWNLOADS", "CONDA_PREFIX")


def _is_venv_bin(entry: str) -> bool:
    path = Path(entry)
    return (path.parent / "pyvenv.cfg").exists() or REPO_ROOT in path.parents


def user_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The environment of a fresh login shell of this machine's user, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_DROPPED_PREFIXES) and k not in _DROPPED
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and not _is_venv_bin(p)
    )
    env["DAI_MLFLOW_ENV_ROOT"] = str(CACHE / "model-envs")
    if "SPARK_SUBMIT_OPTS" in os.environ:  # the suite's JVM options (tests/conftest.py)
        env["SPARK_SUBMIT_OPTS"] = os.environ["SPARK_SUBMIT_OPTS"]
    env["MLFLOW_ENV_ROOT"] = str(
        CACHE / "mlflow-envs" / os.environ.get("PYTEST_XDIST_WORKER", "main")
    )
    env.update(extra or {})
    return env


def tracked_files(root: Path = REPO_ROOT) -> List[str]:
    """Files of the checkout a clone would have, plus new ones not ignored (work in progress)."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [f for f in out.stdout.split("\0") if f and (root / f).is_file()]


@contextlib.contextmanager
def user_checkout(name: str = CHECKOUT.name) -> Iterator[Path]:
    """A copy of the checkout, as a user's clone with its own venvs, held under a lock.

    Tests in other files use another ``name``: pytest-xdist may run them on the other worker,
    which would wait for the lock (the README session holds it for minutes) instead of working.
    """
    checkout = DOCS_CACHE / name
    DOCS_CACHE.mkdir(parents=True, exist_ok=True)
    with FileLock(str(checkout) + ".lock"):
        checkout.mkdir(exist_ok=True)
        for child in checkout.iterdir():
            if child.name in _KEPT:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        for rel in tracked_files():
            dest = checkout / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / rel, dest)
        yield checkout


def store_client(checkout: Path):  # an mlflow.MlflowClient
    """A client over a copy of the checkout's ``mlflow.db`` under a name never used before.

    MLflow keeps one store (and its open sqlite connections) per URI for the process: a client
    for the checkout's own path would still read the file an earlier test deleted.
    """
    import tempfile

    import mlflow

    folder = Path(tempfile.mkdtemp(prefix="dai-mlflow-store-copy-"))
    shutil.copy2(checkout / "mlflow.db", folder / "mlflow.db")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def substitute(text: str, subs: Sequence[Tuple[str, str]]) -> str:
    """Placeholders replaced by stand-in values (literal, in order; ``re:`` for a pattern)."""
    for old, new in subs:
        text = re.sub(old[3:], new, text) if old.startswith("re:") else text.replace(old, new)
    return text


class Session:
    """One reader's terminal: the commands of a document, run in order from ``cwd``."""

    def __init__(
        self, cwd: Path, env: Dict[str, str], subs: Sequence[Tuple[str, str]] = ()
    ) -> None:
        self.cwd = cwd
        self.env = env
        self.subs = list(subs)
        self.prelude: List[str] = []
        self.ran: List[str] = []  # where each command that ran is written (for the report)

    def script(self, command: Command) -> str:
        text = substitute(command.text, self.subs)
        return "\n".join([*self.prelude, text])

    def _env(self, command: Command) -> Dict[str, str]:
        return {**self.env, **{k: substitute(v, self.subs) for k, v in command.env}}

    def run(
        self, command: Command, timeout: float = 900, expect_rc: Optional[int] = 0
    ) -> subprocess.CompletedProcess:
        """Run it to its end; it must exit ``expect_rc`` (None: any code)."""
        started = time.monotonic()
        proc = subprocess.run(
            ["bash", "-lc", self.script(command)],
            cwd=self.cwd, env=self._env(command), capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        seconds = time.monotonic() - started
        self.ran.append(f"{command.where} ({seconds:.0f} s)")
        assert expect_rc is None or proc.returncode == expect_rc, (
            f"{command.where}: the documented command exited {proc.returncode}:\n"
            f"$ {substitute(command.text, self.subs)}\n--- stdout:\n{proc.stdout[-2000:]}\n"
            f"--- stderr:\n{proc.stderr[-4000:]}"
        )
        return proc

    def keep(self, command: Command) -> None:
        """A ``source``/``export`` line: run it once, then before every later command."""
        self.run(command, timeout=120)
        self.prelude.append(substitute(command.text, self.subs))

    @contextlib.contextmanager
    def serving(self, command: Command, url: str, timeout: float = 600) -> Iterator[Path]:
        """Start a long-running command, wait until ``url`` answers 200, then stop it after."""
        log = self.cwd / f".serve-{command.line}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["bash", "-lc", self.script(command)], cwd=self.cwd, env=self._env(command),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        started = time.monotonic()
        try:
            while True:
                assert proc.poll() is None, (
                    f"{command.where}: the documented server exited {proc.returncode}:\n"
                    f"$ {substitute(command.text, self.subs)}\n{log.read_text()[-4000:]}"
                )
                try:
                    with urllib.request.urlopen(url, timeout=5) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() - started < timeout, (
                    f"{command.where}: {url} did not answer within {timeout:.0f} s:\n"
                    f"{log.read_text()[-4000:]}"
                )
                time.sleep(0.5)
            self.ran.append(f"{command.where} (up in {time.monotonic() - started:.0f} s)")
            yield log
        finally:
            stop_group(proc)


def stop_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process group the command started (its servers too), SIGKILL after grace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # A child that outlived the leader keeps the group alive: end it too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
