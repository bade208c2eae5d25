"""The README's Python example runs as a user would run it (a fresh interpreter, a fresh folder)
and gives the KPIs the same steps give through the CLI."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_example() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- tested: tests/test_readme.py[^>]*-->\n```python\n(.*?)```", text, re.S)
    assert match, "the README's tested Python example is missing"
    return match.group(1)


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "FOVEAL_WORKSPACE": str(cwd / "foveal-workspace")}
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _cli_job(cwd: Path, *argv: str) -> dict:
    done = _run([sys.executable, "-m", "foveal.cli.main", *argv, "--format", "json"], cwd)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_the_readme_python_example_gives_the_cli_numbers(tmp_path):
    py_dir, cli_dir = tmp_path / "python", tmp_path / "cli"
    py_dir.mkdir()
    cli_dir.mkdir()
    done = _run([sys.executable, "-c", _python_example()], py_dir)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # quiet: nothing but what the example prints
    first, second = done.stdout.strip().split("} {", 1)
    evaluate_kpis, export_kpis = ast.literal_eval(first + "}"), ast.literal_eval("{" + second)
    assert 0.0 <= evaluate_kpis["top1"] <= 1.0 and export_kpis["onnx_max_abs_diff"] <= 1e-4
    # the same steps through the CLI, with the same data
    make = "from foveal.data import make_demo_dataset; make_demo_dataset('data', num_train=800, num_val=100, num_test=200, image_size=32, num_classes=4)"
    assert _run([sys.executable, "-c", make], cli_dir).returncode == 0
    common = ["model.arch=vit_micro_patch4", "dataset.augmentation.input_size=32", "train.num_epochs=2"]
    pre = _cli_job(cli_dir, "mae", "train", *common, "dataset.train_data_sources=data/images_train")
    fin = _cli_job(cli_dir, "mae", "train", "--parent", pre["id"], *common, "train.stage=finetune",
                   "dataset.train_data_sources=data/labeled_train")  # fmt: skip
    ev = _cli_job(cli_dir, "mae", "evaluate", "--parent", fin["id"], "dataset.val_data_sources=data/labeled_test")
    assert ev["kpis"] == pytest.approx(evaluate_kpis)
