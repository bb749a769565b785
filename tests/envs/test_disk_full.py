"""Fault: the disk fills while a model env is built.

The env root is a small tmpfs: the build fails with one line that says so and names the way
out, leaves no half-built env (no stamp, no env folder), and once the disk has room the next
build succeeds.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from dai_mlflow.envs.model_env import ENV_ROOT_ENV, ensure_model_env
from dai_mlflow.envs.venvs import STAMP_FILE_NAME, NoSpaceError
from dai_mlflow.log.run import stage_model


def _mount(folder: Path, size: str) -> None:
    cmd = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")


def _left_behind(root: Path) -> list:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("model-")) + [
        str(p) for p in root.rglob(STAMP_FILE_NAME)
    ]


@pytest.mark.venv
def test_full_disk_during_a_model_env_build(standin, tmp_path: Path) -> None:
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    staged = stage_model(standin("1.10", "binary").folder, tmp_path / "work")
    root = tmp_path / "env-root"
    root.mkdir()
    _mount(root, "48m")
    try:
        started = time.monotonic()
        with pytest.raises(NoSpaceError) as e:
            ensure_model_env(staged.path, "uv", str(root))
        failed_after = time.monotonic() - started
        msg = str(e.value)
        print(f"\nfull disk: failed after {failed_after:.0f}s with: Error: {msg}")
        assert "\n" not in msg
        assert msg.startswith(f"no space left on device while building the model env in {root}")
        assert ENV_ROOT_ENV in msg
        assert _left_behind(root) == []

        subprocess.run(["mount", "-o", "remount,size=4g", str(root)], check=True)
        started = time.monotonic()
        python = ensure_model_env(staged.path, "uv", str(root))
        print(f"with room: built in {time.monotonic() - started:.0f}s")
        assert len(list(root.glob(f"model-*/{STAMP_FILE_NAME}"))) == 1
        subprocess.run([str(python), "-c", "import mlflow, pandas"], check=True)
    finally:
        subprocess.run(["umount", "-l", str(root)], check=False)
