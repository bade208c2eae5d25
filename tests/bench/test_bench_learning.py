"""The learning-table benchmark runs end to end at toy size (its numbers mean nothing there)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.mark.slow
def test_learning_table_dry_run(tmp_path):
    done = subprocess.run(
        [sys.executable, str(BENCH / "learning_table.py"), "--seeds", "1", "--tiny", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "| nvdinov2 kNN: (a) raw pixels |" in out and "| online - offline, largest gap (points) | 0.00 |" in out
    assert "MAE fine-tune from MAE pretraining" in out and "online kNN curve, seed 0: 1:" in out
