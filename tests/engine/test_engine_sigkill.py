"""Real crashes (SIGKILL): mid-write saves leave no partial file; killed runs resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from foveal.engine import (
    StatusWriter,
    checkpoint_filename,
    find_latest_checkpoint,
    load_checkpoint,
    read_status,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::UserWarning"),
    pytest.mark.filterwarnings("ignore:.*LeafSpec.*"),
]


def test_sigkilled_run_resumes_from_its_last_checkpoint(tmp_path, tiny):
    results = tmp_path / "results"
    script = tmp_path / "slow_train.py"
    script.write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from conftest import TinyModule, train
        from foveal.engine import StatusWriter
        results = {str(results)!r}
        train(results, 100, module=TinyModule(step_sleep=0.1), status=StatusWriter(results + "/status.json"))
    """)
    )
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while find_latest_checkpoint(results) is None:
            assert process.poll() is None, process.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL

    latest = find_latest_checkpoint(results)
    epoch = load_checkpoint(latest, network="classification", kind="full")["epoch"]
    assert epoch >= 1 and latest.name == f"model_epoch_{epoch:03d}_step_{4 * epoch:05d}.pth"

    module, _ = tiny.train(results, epoch + 2, resume=True, status=StatusWriter(results / "status.json"))
    assert module.epochs_trained == [epoch + 1, epoch + 2]
    assert (
        find_latest_checkpoint(results).name == f"model_epoch_{epoch + 2:03d}_step_{4 * (epoch + 2):05d}.pth"
    )
    records = read_status(results / "status.json")
    assert records[0]["message"] == "Training started"
    assert records[-3]["message"] == f"Training resumed after epoch {epoch}"
    assert [r["epoch"] for r in records[-2:]] == [epoch + 1, epoch + 2]


def test_sigkill_during_write_leaves_only_an_ignored_temp_file(tmp_path):
    """A real crash: the child dies (SIGKILL) halfway through writing the temp file."""
    script = textwrap.dedent(f"""
        import os, signal, torch
        from foveal.engine import save_checkpoint_atomic
        def dying_save(obj, handle, *a, **k):
            handle.write(b"PK\\x03\\x04 half written")
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        save_checkpoint_atomic({{"network": "classification"}}, {str(tmp_path / checkpoint_filename(3, 12))!r})
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert result.returncode == -9, result.stderr.decode()
    names = [p.name for p in tmp_path.iterdir()]
    assert checkpoint_filename(3, 12) not in names
    assert len(names) == 1 and names[0].startswith(".tmp-")  # the partial temp file
    assert find_latest_checkpoint(tmp_path) is None
