"""Find local Python interpreters by version, without touching the network.

In order: ``DAI_MLFLOW_PYTHON_<major>_<minor>``, ``python3.X``/``python3``/``python`` on PATH
(pyenv shims that fail to run are skipped), pyenv's versions folder, uv's managed interpreters.
``python -m dai_mlflow.envs.pythons 3.8`` prints the interpreter that would be used.
Stdlib only, Python 3.8-safe. See README.md, "Prerequisites".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from dai_mlflow.errors import PythonNotFoundError, python_env_var, report_error

# The real base interpreter: a venv's python found on PATH must not become the base of other
# venvs (they would break when that venv is deleted).
_PROBE = (
    "import os, sys, platform; print(platform.python_version()); "
    "print(os.path.realpath(getattr(sys, '_base_executable', None) or sys.executable))"
)


@dataclass(frozen=True)
class Interpreter:
    """A runnable interpreter and the exact version it reports."""

    executable: Path
    version: str

    @property
    def major_minor(self) -> str:
        return ".".join(self.version.split(".")[:2])


def _version_key(version: str) -> Tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def matches(requested: str, actual: str) -> bool:
    """True when ``actual`` (e.g. 3.8.18) satisfies ``requested`` (3.8 or 3.8.18)."""
    want = requested.split(".")
    return actual.split(".")[: len(want)] == want


_probe_cache: Dict[str, Optional[Tuple[str, str]]] = {}


def probe(executable: Path) -> Optional[Tuple[str, str]]:
    """Return (version, sys.executable) that an executable reports, or None if it is no Python.

    A pyenv shim is a shell script; the interpreter it runs reports its real path here.
    """
    key = str(executable)
    if key not in _probe_cache:
        try:
            out = subprocess.run(
                [key, "-c", _PROBE],
                capture_output=True,
                text=True,
                timeout=20,
            )
            lines = out.stdout.split("\n")
            ok = out.returncode == 0 and len(lines) >= 2 and lines[0] and lines[1]
            _probe_cache[key] = (lines[0].strip(), lines[1].strip()) if ok else None
        except (OSError, subprocess.TimeoutExpired):
            _probe_cache[key] = None
    return _probe_cache[key]


def _pyenv_root() -> Path:
    return Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _uv_python_dir() -> Path:
    env = os.environ.get("UV_PYTHON_INSTALL_DIR")
    if env:
        return Path(env)
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "uv" / "python"


def _candidates(requested: str) -> Iterator[Tuple[str, Path]]:
    """Yield (where, executable) pairs, most explicit first."""
    override = os.environ.get(python_env_var(requested))
    if override:
        yield python_env_var(requested), Path(override)
    major_minor = ".".join(requested.split(".")[:2])
    names = [f"python{major_minor}", "python3", "python"]
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        for name in names:
            exe = Path(folder or ".") / name
            if exe.is_file() and os.access(exe, os.X_OK):
                yield "PATH", exe
    versions = _pyenv_root() / "versions"
    if versions.is_dir():
        for entry in sorted(versions.iterdir(), reverse=True):
            if entry.name.startswith(major_minor):
                yield "pyenv", entry / "bin" / "python"
    uv_dir = _uv_python_dir()
    if uv_dir.is_dir():
        for entry in sorted(uv_dir.glob(f"cpython-{major_minor}*"), reverse=True):
            yield "uv", entry / "bin" / "python3"


def search_places() -> List[str]:
    """Human-readable list of the places :func:`find_python` searches."""
    return ["PATH", f"pyenv ({_pyenv_root() / 'versions'})", f"uv ({_uv_python_dir()})"]


def find_python(requested: str) -> Interpreter:
    """Find an interpreter for ``requested`` ("3.8" picks the newest 3.8.x, "3.8.18" is exact).

    Args:
        requested: a ``major.minor`` or ``major.minor.micro`` version.

    Returns:
        The interpreter, with the exact version it reports.

    Raises:
        PythonNotFoundError: no interpreter in any searched place matches.
    """
    found: List[Interpreter] = []
    seen = set()
    for where, exe in _candidates(requested):
        if not exe.exists():
            if where == python_env_var(requested):
                raise PythonNotFoundError(requested, [f"{where}={exe} (does not exist)"])
            continue
        real = os.path.realpath(exe)
        if real in seen:
            continue
        seen.add(real)
        reported = probe(exe)
        if reported and matches(requested, reported[0]):
            interp = Interpreter(Path(reported[1]), reported[0])
            if where == python_env_var(requested):
                return interp
            found.append(interp)
    if not found:
        raise PythonNotFoundError(requested, search_places())
    # An exact request is satisfied by any match; for "3.8" prefer the newest micro.
    return max(found, key=lambda i: _version_key(i.version))


def current() -> Interpreter:
    """The interpreter running this code."""
    return Interpreter(Path(sys.executable), ".".join(map(str, sys.version_info[:3])))


# Python lines of DAI pipelines: 1.10 LTS runs on 3.8, 1.11/2.x on 3.11.
DAI_PYTHONS = ("3.8", "3.11")
_ACTIVATE_MARK = "# dai-mlflow: local interpreters for uv (added by dai_mlflow.envs.pythons)"
# `pyenv install X` that links a local Python X instead of downloading (package data).
PYENV_OFFLINE_SCRIPT = Path(__file__).resolve().parent / "pyenv_offline"


def write_tools(
    folder: Path, interpreters: Sequence[Interpreter], uv: Optional[str] = None
) -> List[str]:
    """Put in ``folder`` what MLflow's uv and virtualenv env managers look for, offline.

    * ``python3.X`` and ``python3.X.Y`` links to each interpreter: ``uv venv --python=3.8.18``
      (MLflow's ``env_manager="uv"``) only looks on PATH and in uv's own folder, so an
      installed-but-unselected pyenv 3.8 stays invisible to it;
    * ``pyenv``: a copy of the offline wrapper (:data:`PYENV_OFFLINE_SCRIPT`): MLflow's
      ``env_manager="virtualenv"`` runs ``pyenv install --skip-existing X`` into a fresh
      ``PYENV_ROOT``, which would download CPython; the wrapper links a local X there instead
      (every other ``pyenv`` command goes to the real pyenv);
    * ``uv``, when given.

    The folder must not be a venv's ``bin``: an interpreter started through a link next to a
    ``pyvenv.cfg`` takes that venv's home and breaks.

    Returns:
        The names written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    links = {}
    for interp in interpreters:
        for name in (f"python{interp.major_minor}", f"python{interp.version}"):
            links[name] = os.path.realpath(interp.executable)
    if uv:
        links["uv"] = os.path.realpath(uv)
    for name, target in links.items():
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    wrapper = folder / "pyenv"
    tmp = folder / f".pyenv.{os.getpid()}.tmp"
    tmp.write_bytes(PYENV_OFFLINE_SCRIPT.read_bytes())
    tmp.chmod(0o755)
    tmp.replace(wrapper)
    return sorted([*links, "pyenv"])


def link_interpreters(folder: Path, versions: Sequence[str] = DAI_PYTHONS) -> Dict[str, Path]:
    """:func:`write_tools` for the found interpreters of ``versions`` (missing ones skipped).

    Returns:
        version -> its ``python3.X`` link.
    """
    found: Dict[str, Interpreter] = {}
    for version in versions:
        try:
            found[version] = find_python(version)
        except PythonNotFoundError:
            continue
    write_tools(folder, list(found.values()))
    return {v: folder / f"python{i.major_minor}" for v, i in found.items()}


def add_to_activate(venv: Path, folder: Path, exports: Optional[Dict[str, str]] = None) -> None:
    """Make ``venv``'s activate script put ``folder`` (:func:`write_tools`) first on PATH and
    forbid uv's Python downloads (plain ``mlflow`` then restores model envs offline), and export
    ``exports``."""
    activate = venv / "bin" / "activate"
    text = activate.read_text()
    if _ACTIVATE_MARK in text:
        text = text[: text.index("\n" + _ACTIVATE_MARK)]
    lines = [_ACTIVATE_MARK, f'PATH="{folder}:$PATH"', "export PATH"]
    lines += ["export UV_PYTHON_DOWNLOADS=never"]
    lines += [f'export {k}="{v}"' for k, v in sorted((exports or {}).items())]
    activate.write_text(text + "\n" + "\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    """CLI: print the interpreter for each requested version, or a one-line error."""
    parser = argparse.ArgumentParser(
        prog="python -m dai_mlflow.envs.pythons",
        description="Find local interpreters by version (PATH, pyenv, uv), offline.",
    )
    parser.add_argument("versions", nargs="*", help="e.g. 3.8 3.11.7")
    parser.add_argument(
        "--link", type=Path, help="put python3.X links to the DAI Pythons (and pyenv) here"
    )
    parser.add_argument("--activate", type=Path, help="venv whose activate script adds --link")
    parser.add_argument(
        "--export", action="append", default=[], metavar="NAME=VALUE", help="also export this"
    )
    args = parser.parse_args(argv)
    if args.link:
        linked = link_interpreters(args.link)
        if args.activate:
            exports = dict(item.split("=", 1) for item in args.export)
            add_to_activate(args.activate, args.link.resolve(), exports)
        for version, link in linked.items():
            print(f"{version}\t{link}")
    if not args.versions and not args.link:
        parser.print_usage()
        return 2
    try:
        for requested in args.versions:
            interp = find_python(requested)
            print(f"{requested}\t{interp.version}\t{interp.executable}")
    except PythonNotFoundError as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
