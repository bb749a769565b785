"""A deploy under load: ``benchmarks/serve_load.py`` against a local endpoint while the champion
changes, through the real ``mlflow run . -e deploy``.

    venvs/launcher/bin/python benchmarks/deploy_switch.py [--clients 4] [--seconds 45] [--no-rpc]

Steps (a throwaway tracking store, endpoint folder and port; the stand-in models and envs the
test suite caches under ``tests/.cache``):

1. register the worse stand-in model, ``validate`` it (first champion) and deploy it: v1 serves;
2. register the better one and ``validate`` it: promoted, ``@champion`` is v2;
3. start ``serve_load.py --url <endpoint>`` (single-row requests, then batches, for
   ``--seconds`` per phase), wait a few seconds, then run ``mlflow run . -e deploy``;
4. print serve_load's table (requests, errors, p50/p99 latency, which version answered) and the
   deploy's own timeline (start of the new servers, smoke test, switch, drain).

The exit code is serve_load's: 1 when any request failed. Nothing is timed-asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

LAUNCHER_BIN = REPO_ROOT / "venvs" / "launcher" / "bin"
NAME = "dai_bench_deploy"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=45.0, help="per serve_load phase")
    parser.add_argument("--lead", type=float, default=5.0, help="load before the deploy starts")
    parser.add_argument(
        "--no-rpc", dest="rpc", action="store_false", help="serve and load /invocations only"
    )
    args = parser.parse_args(argv)

    import mlflow

    from dai_mlflow.envs.processes import free_port
    from dai_mlflow.lifecycle.deploy.local import undeploy
    from dai_mlflow.lifecycle.deploy.request import DeployRequest
    from dai_mlflow.lifecycle.deploy.run import deploy
    from dai_mlflow.lifecycle.validate import ValidateRequest, validate
    from tests.fixtures_lifecycle import LifecycleStore, get_worse_model_dir
    from tests.fixtures_model import MODEL_ENV_ROOT, get_logged_model, run_env
    from tests.fixtures_standin import get_standin

    work = Path(tempfile.mkdtemp(prefix="dai-mlflow-bench-deploy-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    build = get_standin("1.10", "binary")
    good, worse = get_logged_model("1.10", "binary").local_dir, get_worse_model_dir()
    env = {
        "MLFLOW_TRACKING_URI": uri,
        "DAI_MLFLOW_ENV_ROOT": str(MODEL_ENV_ROOT),
        "DAI_MLFLOW_ENDPOINT_ROOT": str(work / "endpoints"),
        "UV_PYTHON_DOWNLOADS": "never",
        **build.license_env(),
    }
    os.environ.update(env)
    os.chdir(work)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    store = LifecycleStore(uri, work)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"work folder {work}; endpoint {url}", flush=True)
    try:
        store.register(worse, NAME, "challenger")
        validate(ValidateRequest(NAME, build.holdout_csv))
        deploy(DeployRequest(NAME, port=port, rpc=args.rpc))
        store.register(good, NAME, "challenger")
        validate(ValidateRequest(NAME, build.holdout_csv))

        load_cmd = [str(LAUNCHER_BIN / "python"), str(REPO_ROOT / "benchmarks" / "serve_load.py"),
                    "--url", url, "--clients", str(args.clients), "--requests", "20000",
                    "--batch-requests", "5000", "--batch-rows", "50",
                    "--max-seconds", str(args.seconds)]  # fmt: skip
        load = subprocess.Popen(load_cmd, cwd=str(REPO_ROOT), env=run_env(env),
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
        time.sleep(args.lead)
        deploy_cmd = [str(LAUNCHER_BIN / "mlflow"), "run", str(REPO_ROOT), "-e", "deploy",
                      "-P", f"model_name={NAME}", "-P", f"port={port}",
                      "-P", f"rpc={str(args.rpc).lower()}"]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.Popen(
            deploy_cmd,
            cwd=str(work),
            env=run_env(env),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        timeline = []
        for line in proc.stderr:  # stamped as they come: where the deploy's time goes
            if line.startswith("[dai-mlflow]") or "=== Running command" in line:
                timeline.append(f"{time.monotonic() - started:6.1f}s {line.strip()[:150]}")
        proc.wait()
        seconds = time.monotonic() - started
        out, _ = load.communicate()
        print(out)
        print(f"mlflow run -e deploy: exit {proc.returncode} after {seconds:.1f}s "
              f"(started {args.lead:.0f}s into the first phase)")  # fmt: skip
        for line in timeline:
            print("    " + line)
        return load.returncode or proc.returncode
    finally:
        try:
            undeploy(NAME)
        except Exception as e:  # a benchmark cleans up what it can
            print(f"undeploy: {e}")


if __name__ == "__main__":
    sys.exit(main())
