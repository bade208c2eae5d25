"""bench/device_check.sh end to end on CPU (--device cpu --tiny): the GPU tests are collected and
skipped cleanly, the suite runs every case at toy size, and the results land in one folder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_device_check_dry_run_on_cpu(tmp_path):
    done = subprocess.run(
        ["bash", str(ROOT / "bench" / "device_check.sh"), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=900, env={**__import__("os").environ, "PYTHON": sys.executable},
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + (tmp_path / "gpu_suite.log").read_text()[-2000:])
    assert done.stdout.splitlines() == ["pytest -m gpu: exit 0", "gpu_suite: exit 0"]
    pytest_out = (tmp_path / "pytest_gpu.txt").read_text()
    assert "skipped" in pytest_out and "failed" not in pytest_out and "error" not in pytest_out.lower()
    assert "| case |" in (tmp_path / "gpu_suite.md").read_text()
    assert "torch" in (tmp_path / "environment.txt").read_text()


def test_gpu_tests_are_skipped_cleanly_without_cuda():
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", str(ROOT / "tests" / "gpu"),
                           "-p", "no:cacheprovider"], capture_output=True, text=True, timeout=300)  # fmt: skip
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here: the GPU tests run instead")
    assert done.returncode == 0 and "8 skipped" in done.stdout, done.stdout[-1500:]
