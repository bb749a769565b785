"""Seconds and peak memory of ``mlflow run`` (logging a pipeline) next to MLflow's own floor.

Timed in one run, envs warm (the project env MLflow builds from ``python_env.yaml`` and the model
env of the pipelines' DAI version are built by untimed warm-up runs first), default store
(``sqlite:///<cwd>/mlflow.db`` of a scratch folder, created by the warm-up):

  (f) MLflow's floor: ``mlflow run`` of a trivial entry point (``python -c "import mlflow"``)
      with the same ``python_env.yaml``;
  (n) a new light pipeline (stand-in) of a DAI version seen by the warm-up;
  (h) a new heavy pipeline (``--runtime-mb``/``--runtime-files``: a runtime wheel of a real
      pipeline's weight, ~1.2 GB ``scorer.zip``) of a DAI version whose heavy env is warm.

Peak memory of (h): the process tree of ``mlflow run`` is sampled every 0.1 s (largest process,
and the largest sum over the tree). Where the seconds go: the time between the entry point's
progress lines.

Targets: (n) <= (f) + 8 s; (h) <= (n) + 10 s; peak memory of (h) <= 1 GB.

    venvs/launcher/bin/python benchmarks/mlflow_run.py                 # the checkout's env
    venvs/launcher/bin/python benchmarks/mlflow_run.py --project-env envs/python_env.dai-1.10.yaml
    venvs/launcher/bin/python benchmarks/mlflow_run.py --runtime-mb 0  # light pipelines only

Envs are kept in the test cache (``tests/.cache``), so after ``make test`` the warm-ups are quick;
the first heavy warm-up installs the heavy runtime once (a minute or two).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

LAUNCHER_BIN = REPO_ROOT / "venvs" / "launcher" / "bin"
CACHE = REPO_ROOT / "tests" / ".cache"
_FLOOR_MLPROJECT = """name: floor
python_env: python_env.yaml
entry_points:
  main:
    command: python -c "import mlflow"
"""
# Progress lines of the entry point that end a step, and the step's name.
_STEPS = (
    ("Running command", "MLflow's CLI prepares the run"),
    ("[dai-mlflow] opened ", "entry point starts; zip opened (extracted), requirements read"),
    ("[dai-mlflow] pipeline: ", "model staged (copy into the model)"),
    ("[dai-mlflow] model env ", "model env found (its wheels hashed)"),
    ("[dai-mlflow] checked: ", "check in the model env"),
    ("[dai-mlflow] tracking: ", "waiting for the tracking bridge"),
    ("[dai-mlflow] logged the model", "model files logged into the run"),
    ("model_uri=", "registered; bridge stopped"),
    ("=== Run (ID", "entry point exits"),
    ("<exit>", "MLflow's CLI ends the run and exits"),
)


@dataclass
class Timed:
    """One timed ``mlflow run``: seconds, memory, and when each output line came."""

    seconds: float
    lines: List[Tuple[float, str]]
    peak_process_mb: float = 0.0
    peak_tree_mb: float = 0.0
    returncode: int = 0
    steps: Dict[str, float] = field(default_factory=dict)
    stored_mb: float = 0.0


def _children() -> Dict[int, List[int]]:
    tree: Dict[int, List[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(entry))
    return tree


def _tree_rss_mb(root: int) -> Tuple[float, float]:
    """(largest process, sum over the tree) of ``root``'s process tree, in MB."""
    tree, todo, sizes = _children(), [root], []
    while todo:
        pid = todo.pop()
        todo.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/statm") as f:
                sizes.append(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6)
        except OSError:
            continue
    return (max(sizes) if sizes else 0.0), sum(sizes)


def _mlflow_run(project: Path, params: Dict[str, str], cwd: Path, env: Dict[str, str]) -> Timed:
    cmd = [str(LAUNCHER_BIN / "mlflow"), "run", str(project)]
    for key, value in params.items():
        cmd += ["-P", f"{key}={value}"]
    started = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=str(cwd), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: List[Tuple[float, str]] = []

    def _read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append((time.monotonic() - started, line.rstrip("\n")))

    reader = threading.Thread(target=_read, daemon=True)
    reader.start()
    peak_process = peak_tree = 0.0
    while proc.poll() is None:
        one, tree = _tree_rss_mb(proc.pid)
        peak_process, peak_tree = max(peak_process, one), max(peak_tree, tree)
        time.sleep(0.1)
    seconds = time.monotonic() - started
    reader.join(timeout=10)
    timed = Timed(seconds, lines, peak_process, peak_tree, proc.returncode)
    timed.steps = _steps(timed)
    return timed


def _du_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def _stored(cwd: Path, run) -> Timed:
    """Run, and record how much the artifact store (``<cwd>/mlruns``) grew."""
    before = _du_mb(cwd / "mlruns")
    timed = run()
    timed.stored_mb = _du_mb(cwd / "mlruns") - before
    return timed


def _steps(timed: Timed) -> Dict[str, float]:
    """Seconds of each step: from the previous step's line to the line that ends it."""
    marks = [*timed.lines, (timed.seconds, "<exit>")]
    out: Dict[str, float] = {}
    previous = 0.0
    for needle, name in _STEPS:
        at = next((t for t, line in marks if needle in line), None)
        if at is not None and at >= previous:
            out[name] = at - previous
            previous = at
    return out


def _checked(what: str, timed: Timed) -> Timed:
    if timed.returncode != 0:
        tail = "\n".join(line for _, line in timed.lines[-15:])
        raise SystemExit(f"Error: {what} failed (exit {timed.returncode}):\n{tail}")
    return timed


def _project(scratch: Path, project_env: Optional[Path]) -> Path:
    """The checkout, or a copy of its project files run with another python_env.yaml."""
    if project_env is None:
        return REPO_ROOT
    project = scratch / "project"
    project.mkdir()
    for name in ("MLproject", "scorer_entry.py"):
        shutil.copy2(REPO_ROOT / name, project / name)
    shutil.copytree(
        REPO_ROOT / "dai_mlflow",
        project / "dai_mlflow",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    shutil.copy2(project_env, project / "python_env.yaml")
    return project


def _floor_project(scratch: Path, project: Path) -> Path:
    floor = scratch / "floor"
    floor.mkdir()
    (floor / "MLproject").write_text(_FLOOR_MLPROJECT)
    shutil.copy2(project / "python_env.yaml", floor / "python_env.yaml")
    return floor


def _env(license_file: Path) -> Dict[str, str]:
    """A user's shell with ``venvs/launcher`` activated, the test cache's env roots."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "DRIVERLESS_AI_")) and k not in ("PYTHONPATH",)
    }
    env["PATH"] = os.pathsep.join(
        [str(LAUNCHER_BIN), str(REPO_ROOT / "venvs" / "pythons"), env.get("PATH", "")]
    )
    env["VIRTUAL_ENV"] = str(LAUNCHER_BIN.parent)
    env["UV_PYTHON_DOWNLOADS"] = "never"
    env["MLFLOW_ENV_ROOT"] = str(CACHE / "mlflow-envs" / "main")
    env["DAI_MLFLOW_ENV_ROOT"] = str(CACHE / "model-envs")
    env["DRIVERLESS_AI_LICENSE_FILE"] = str(license_file)
    return env


def _build(out: Path, line: str, seed: int, runtime_mb: int = 0, runtime_files: int = 0):
    from dai_mlflow.standin import build_pipeline

    return build_pipeline(out, line, "binary", seed, runtime_mb, runtime_files)


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def _print_steps(results: Dict[str, Timed]) -> None:
    names = [name for _, name in _STEPS if any(name in t.steps for t in results.values())]
    print("\nwhere the seconds go (from the previous progress line to the one ending the step):")
    print(f"  {'step':<66}" + "".join(f"{k:>9}" for k in results))
    for name in names:
        cells = "".join(
            f"{t.steps[name]:8.1f}s" if name in t.steps else f"{'-':>9}" for t in results.values()
        )
        print(f"  {name:<66}{cells}")


def main(argv: Optional[list] = None) -> int:
    """Warm up, time (f), (n) and (h), print the targets table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dai-version", default="1.10", help="DAI line of the pipelines")
    parser.add_argument("--project-env", type=Path, help="python_env.yaml to run the project with")
    parser.add_argument(
        "--runtime-mb", type=int, default=1150, help="heavy runtime's MiB (0: no h)"
    )
    parser.add_argument("--runtime-files", type=int, default=3000)
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="dai-mlflow-run-bench-"))
    try:
        project = _project(scratch, args.project_env.resolve() if args.project_env else None)
        floor = _floor_project(scratch, project)
        cwd = scratch / "cwd"
        cwd.mkdir()
        warm = _build(scratch / "warm", args.dai_version, 100)
        env = _env(warm.license_path)
        print(f"project env: {project / 'python_env.yaml'}; scratch {scratch}", flush=True)
        started = time.monotonic()
        _checked("warm-up", _mlflow_run(project, {"pipeline": str(warm.zip_path)}, cwd, env))
        _checked("floor warm-up", _mlflow_run(floor, {}, cwd, env))
        print(f"warmed up in {time.monotonic() - started:.0f}s (not counted)", flush=True)
        light = _build(scratch / "light", args.dai_version, 1)
        results: Dict[str, Timed] = {}
        results["f"] = _checked("(f)", _mlflow_run(floor, {}, cwd, env))
        params = {"pipeline": str(light.zip_path), "model_name": "bench_light"}
        results["n"] = _checked("(n)", _stored(cwd, lambda: _mlflow_run(project, params, cwd, env)))
        heavy_mb = 0.0
        if args.runtime_mb:
            sizes = (args.runtime_mb, args.runtime_files)
            first = _build(scratch / "heavy1", args.dai_version, 2, *sizes)
            started = time.monotonic()
            _checked(
                "heavy warm-up", _mlflow_run(project, {"pipeline": str(first.zip_path)}, cwd, env)
            )
            print(f"heavy env warmed up in {time.monotonic() - started:.0f}s (not counted)")
            shutil.rmtree(scratch / "heavy1")
            heavy = _build(scratch / "heavy2", args.dai_version, 3, *sizes)
            heavy_mb = heavy.zip_path.stat().st_size / 1e6
            params = {"pipeline": str(heavy.zip_path), "model_name": "bench_heavy"}
            results["h"] = _checked(
                "(h)", _stored(cwd, lambda: _mlflow_run(project, params, cwd, env))
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    f, n = results["f"].seconds, results["n"].seconds
    print(f"\nmlflow run, warm, DAI {args.dai_version} stand-ins, default sqlite store:")
    print(f"  (f) MLflow's floor: trivial entry point, same python_env.yaml   {f:7.1f} s")
    print(f"  (n) new light pipeline of a seen DAI version                    {n:7.1f} s")
    if "h" in results:
        h = results["h"]
        print(
            f"  (h) new {heavy_mb:.0f} MB pipeline of a seen DAI version"
            f"           {h.seconds:7.1f} s"
        )
    print("targets:")
    print(f"  (n) <= (f) + 8 s: (n) - (f) = {n - f:5.1f} s  {_verdict(n - f <= 8)}")
    if "h" in results:
        h = results["h"]
        print(
            f"  (h) <= (n) + 10 s: (h) - (n) = {h.seconds - n:5.1f} s  "
            + _verdict(h.seconds - n <= 10)
        )
        print(
            f"  peak memory of (h) <= 1 GB: largest process {h.peak_process_mb:.0f} MB, "
            f"whole process tree {h.peak_tree_mb:.0f} MB  {_verdict(h.peak_tree_mb <= 1000)}"
        )
    print(
        f"  (peak memory of (n): largest process {results['n'].peak_process_mb:.0f} MB, "
        f"tree {results['n'].peak_tree_mb:.0f} MB)"
    )
    stored = ", ".join(f"({k}) {t.stored_mb:.1f} MB" for k, t in results.items() if k != "f")
    print(f"artifact store growth per new model version: {stored}")
    _print_steps(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
