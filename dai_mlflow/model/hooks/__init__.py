"""Interpreter-start fixes for a DAI model's env, shipped in every logged model as a wheel.

Installed as ``dai_mlflow_model_hooks`` with a ``.pth`` that calls :func:`install` before the
first import: no foreign PySpark on ``sys.path``, ``importlib.resources.files`` on 3.8, std
streams with a ``fileno()``, and :mod:`.stdin_server` in place of a foreign MLflow's script.
Stdlib only and Python 3.8-safe (it runs at every interpreter start); the modules import one
another relatively, so they work under either name. See docs/model-hooks.md.
"""

from __future__ import annotations

import os
import re
import sys
import zipfile
from typing import TYPE_CHECKING, Any, List, Optional, Protocol, Sequence, Tuple

if TYPE_CHECKING:
    from importlib.abc import Loader
    from importlib.machinery import ModuleSpec
    from types import ModuleType

DISABLE_ENV = "DAI_MLFLOW_HOOKS"
DEBUG_ENV = "DAI_MLFLOW_HOOKS_DEBUG"
PACKAGE = "dai_mlflow_model_hooks"  # the name this package is installed under in model envs
# This package's modules (what the hooks wheel and a Spark executor's server folder hold).
MODULES = (
    "__init__.py",
    "arrow_server.py",
    "programs.py",
    "serve.py",
    "serving_shim.py",
    "stdin_server.py",
)
SERVER_MODULE = PACKAGE + ".stdin_server"
# Top-level modules of a DAI scoring pipeline whose import touches fileno().
DAI_MODULE_PREFIXES = ("scoring_h2oai_experiment_", "scoring_mli_experiment_", "h2oaicore")
_SPARK_PACKAGES = ("pyspark", "py4j")
# The oldest Python each PySpark line supports (its python_requires).
_PYSPARK_MIN_PYTHON = (((4, 0), (3, 9)), ((3, 5), (3, 8)), ((3, 4), (3, 7)), ((3, 0), (3, 6)))
_VERSION = re.compile(
    r"""^\s*(?:__version__|VERSION)\s*(?::\s*str\s*)?=\s*["']([^"']+)["']""", re.M
)

# What install() did in this process, for `python -m dai_mlflow_model_hooks` and tests.
actions: List[str] = []
_installed = False


def _say(message: str) -> None:
    actions.append(message)
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        try:
            sys.stderr.write("dai-mlflow model hooks: " + message + "\n")
            sys.stderr.flush()
        except Exception:  # a broken stderr must never stop an interpreter
            pass


# --------------------------------------------------------------------------- std streams
class _Writable(Protocol):
    def write(self, data: str) -> int: ...


class FilenoStream:
    """A stream proxy whose ``fileno()`` answers with a real descriptor (1 or 2)."""

    def __init__(self, stream: Optional[_Writable], fd: int) -> None:
        self._stream = stream
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def write(self, data: str) -> int:
        if self._stream is None:
            return len(data)
        return self._stream.write(data)

    def flush(self) -> None:
        if self._stream is not None and hasattr(self._stream, "flush"):
            self._stream.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def has_fileno(stream: Any) -> bool:
    """Whether ``stream.fileno()`` returns a descriptor (any object may be asked)."""
    try:
        return isinstance(stream.fileno(), int)
    except Exception:  # any failure means "no usable fileno"
        return False


def ensure_stream_filenos() -> None:
    """Give ``sys.stdout``/``sys.stderr`` a working ``fileno()`` (idempotent)."""
    for name, fd in (("stdout", 1), ("stderr", 2)):
        stream = getattr(sys, name)
        if not has_fileno(stream):
            setattr(sys, name, FilenoStream(stream, fd))
            _say(f"gave sys.{name} a fileno() ({type(stream).__name__} had none)")


# --------------------------------------------------------------------------- foreign Spark
def _prefixes() -> List[str]:
    return sorted({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)})


def _inside(path: str, prefixes: Sequence[str]) -> bool:
    return any(path == p or path.startswith(p + os.sep) for p in prefixes)


def _read_version(text: Optional[str]) -> Optional[str]:
    match = _VERSION.search(text or "")
    return match.group(1) if match else None


def _version_in_zip(path: str) -> Optional[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return _read_version(zf.read("pyspark/version.py").decode("utf-8", "replace"))
    except (OSError, KeyError, zipfile.BadZipFile, RuntimeError):
        return None


def _version_in_file(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return _read_version(f.read())
    except OSError:
        return None


def _spark_home_of(entry: str) -> Optional[str]:
    """The Spark install an entry belongs to (``<home>/python/lib/x.zip``, ``<home>/python``)."""
    parts = entry.rstrip(os.sep).split(os.sep)
    if len(parts) >= 3 and parts[-3:-1] == ["python", "lib"]:
        return os.sep.join(parts[:-3])
    if parts and parts[-1] == "python":
        return os.sep.join(parts[:-1])
    return None


def pyspark_version(entry: str) -> Optional[str]:
    """The PySpark version an entry provides or belongs to, or None when it cannot be told."""
    real = os.path.realpath(entry)
    if real.lower().endswith(".zip") and os.path.basename(real).lower().startswith("pyspark"):
        found = _version_in_zip(real)
        if found:
            return found
    if os.path.isdir(real):
        found = _version_in_file(os.path.join(real, "pyspark", "version.py"))
        if found:
            return found
    home = _spark_home_of(real)
    if home:
        for candidate in (
            os.path.join(home, "python", "pyspark", "version.py"),  # a Spark distribution
            os.path.join(home, "version.py"),  # pip's layout: SPARK_HOME is the package
        ):
            found = _version_in_file(candidate)
            if found:
                return found
        lib = os.path.join(home, "python", "lib", "pyspark.zip")
        if os.path.isfile(lib):
            return _version_in_zip(lib)
    return None


def pyspark_min_python(version: Optional[str]) -> Optional[Tuple[int, int]]:
    """The oldest Python a PySpark version supports, as a (major, minor) tuple, or None."""
    numbers = re.findall(r"\d+", version or "")
    if len(numbers) < 2:
        return None
    line = (int(numbers[0]), int(numbers[1]))
    for first, python in _PYSPARK_MIN_PYTHON:
        if line >= first:
            return python
    return None


def _provides_spark(entry: str) -> bool:
    real = os.path.realpath(entry)
    base = os.path.basename(real).lower()
    if base.endswith(".zip") and base.startswith(_SPARK_PACKAGES):
        return True
    if os.path.isdir(real):
        return any(os.path.isfile(os.path.join(real, p, "__init__.py")) for p in _SPARK_PACKAGES)
    return False


def foreign_spark_entries(
    path: Optional[Sequence[str]] = None, python: Optional[Tuple[int, int]] = None
) -> List[Tuple[str, str]]:
    """``sys.path`` entries from outside this interpreter whose PySpark does not fit it.

    Args:
        path: the entries to check (default ``sys.path``).
        python: the (major, minor) to fit (default this interpreter's).

    Returns:
        (entry, reason) pairs, in ``path`` order.
    """
    entries = sys.path if path is None else path
    fit: Tuple[int, ...] = tuple(python or sys.version_info[:2])
    prefixes = _prefixes()
    found = []
    for entry in entries:
        if not entry or _inside(os.path.realpath(entry), prefixes) or not _provides_spark(entry):
            continue
        version = pyspark_version(entry)
        needs = pyspark_min_python(version)
        if needs is not None and fit < needs:
            reason = f"PySpark {version} needs Python >= {needs[0]}.{needs[1]}"
            found.append((entry, reason))
    return found


def drop_foreign_spark(
    path: Optional[List[str]] = None, python: Optional[Tuple[int, int]] = None
) -> List[str]:
    """Take another Python's PySpark/py4j off ``sys.path`` (and forget modules loaded from it).

    Args:
        path: the list to edit in place (default ``sys.path``).
        python: the (major, minor) to fit (default this interpreter's).

    Returns:
        The removed entries.
    """
    entries = sys.path if path is None else path
    removed = foreign_spark_entries(entries, python)
    if not removed:
        return []
    gone = [entry for entry, _ in removed]
    entries[:] = [e for e in entries if e not in gone]
    roots = [os.path.realpath(e) for e in gone]
    for name in list(sys.modules):
        if name.split(".")[0] in _SPARK_PACKAGES:
            origin = os.path.realpath(getattr(sys.modules[name], "__file__", None) or "")
            if any(origin.startswith(r) for r in roots):
                del sys.modules[name]
    here = "{}.{}".format(*sys.version_info[:2])
    for entry, reason in removed:
        _say(f"dropped {entry} from sys.path ({reason}; this is Python {here})")
    return gone


# --------------------------------------------------------------------------- importlib.resources
def fill_importlib_resources(module: Optional[object] = None) -> bool:
    """Give Python 3.8's ``importlib.resources`` the 3.9 ``files``/``as_file`` (backport).

    Returns:
        True when the functions were added.
    """
    if sys.version_info >= (3, 9):
        return False
    if module is None:
        import importlib.resources as module  # 3.8 only, on demand
    if hasattr(module, "files"):
        return False
    try:
        import importlib_resources as backport
    except ImportError:
        return False
    module.files = backport.files
    module.as_file = backport.as_file
    _say("importlib.resources.files/as_file taken from the importlib_resources backport")
    return True


class _ThenFill:
    """A loader that runs the real one, then fills in ``importlib.resources``."""

    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    def create_module(self, spec: ModuleSpec) -> Optional[ModuleType]:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        fill_importlib_resources(module)

    def __getattr__(self, name: str) -> object:
        return getattr(self._loader, name)


class ImportHooks:
    """A ``sys.meta_path`` finder that only watches imports; it never finds a module itself."""

    def find_spec(
        self,
        name: str,
        path: Optional[Sequence[str]] = None,
        target: Optional[ModuleType] = None,
    ) -> Optional[ModuleSpec]:
        """Watch ``name``'s import; return a spec only to wrap ``importlib.resources``."""
        if name == "importlib.resources" and sys.version_info < (3, 9):
            from importlib.machinery import PathFinder

            spec = PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _ThenFill(spec.loader)
            return spec
        if "." not in name and name.startswith(DAI_MODULE_PREFIXES):
            ensure_stream_filenos()
        return None


# --------------------------------------------------------------------------- stdin server
def _mlflow_version(mlflow_dir: str) -> Optional[str]:
    return _version_in_file(os.path.join(mlflow_dir, "version.py"))


def foreign_stdin_server(
    argv: Optional[Sequence[str]] = None, site_dir: Optional[str] = None
) -> Optional[str]:
    """The MLflow folder of a stdin-server script from *another* MLflow being run, else None.

    Args:
        argv: the command line (default ``sys.argv``; at interpreter start, the script is
            ``argv[0]``).
        site_dir: where this env's ``mlflow`` is (default: beside this package).

    The script is ``<mlflow>/pyfunc/stdin_server.py``; it is foreign when that MLflow's version
    differs from this env's.
    """
    argv = sys.argv if argv is None else argv
    script = argv[0] if argv else ""
    if os.path.basename(script) != "stdin_server.py":
        return None
    pyfunc = os.path.dirname(os.path.realpath(script))
    mlflow_dir = os.path.dirname(pyfunc)
    if os.path.basename(pyfunc) != "pyfunc" or os.path.basename(mlflow_dir) != "mlflow":
        return None
    here = site_dir or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    mine = _mlflow_version(os.path.join(here, "mlflow"))
    theirs = _mlflow_version(mlflow_dir)
    if mine is None or theirs is None or mine == theirs:
        return None
    return mlflow_dir


def take_over_stdin_server() -> None:
    """Replace this process with our stdin server when a foreign MLflow's script was asked for."""
    foreign = foreign_stdin_server()
    if foreign is None:
        return
    _say(f"running {SERVER_MODULE} instead of {foreign}/pyfunc/stdin_server.py (another MLflow)")
    argv = [sys.executable, "-m", SERVER_MODULE, *sys.argv[1:]]
    try:
        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, argv)
    except OSError as e:  # run the foreign script after all; it says what is missing
        _say(f"could not start {SERVER_MODULE}: {e}")


# --------------------------------------------------------------------------- entry point
def install() -> None:
    """Apply every fix this interpreter needs (called by the wheel's ``.pth`` file; idempotent)."""
    global _installed
    if _installed or os.environ.get(DISABLE_ENV, "1").strip().lower() in ("0", "false", "no"):
        return
    _installed = True
    try:
        drop_foreign_spark()
        if sys.version_info < (3, 9):
            if "importlib.resources" in sys.modules:
                fill_importlib_resources(sys.modules["importlib.resources"])
        if not any(isinstance(f, ImportHooks) for f in sys.meta_path):
            sys.meta_path.insert(0, ImportHooks())
        take_over_stdin_server()
    except Exception as e:  # never stop an interpreter from starting
        _say(f"a hook failed: {type(e).__name__}: {e}")


def main() -> int:
    """``python -m dai_mlflow_model_hooks``: what the hooks did when this interpreter started."""
    print(f"dai-mlflow model hooks in {sys.prefix} (Python {sys.version.split()[0]})")
    print("installed at start-up: " + ("yes" if _installed else "no (no .pth, or turned off)"))
    for line in actions or ["nothing needed fixing"]:
        print("  " + line)
    return 0
