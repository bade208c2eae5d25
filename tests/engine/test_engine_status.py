"""status.json writer and reader."""

from __future__ import annotations

import json
import re
import threading

import pytest

from foveal.engine import StatusWriter, read_status

pytestmark = pytest.mark.unit


def test_lines_have_the_contract_keys(tmp_path):
    writer = StatusWriter(tmp_path / "sub" / "status.json")
    writer.write("STARTED", "Training started", epoch=0, max_epoch=3)
    writer.write(
        "RUNNING",
        "Epoch 1/3 done",
        kpi={"train_loss": 0.5, "val_acc": 0.25},
        epoch=1,
        max_epoch=3,
        step=10,
        max_step=30,
        time_per_epoch=1.25,
        eta=2.5,
    )
    lines = (tmp_path / "sub" / "status.json").read_text().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", first["date"])
    assert re.fullmatch(r"\d{2}:\d{2}:\d{2}", first["time"])
    assert first["status"] == "STARTED" and first["verbosity"] == "INFO"
    assert "kpi" not in first and "eta" not in first
    assert second["kpi"] == {"train_loss": 0.5, "val_acc": 0.25}
    assert (second["epoch"], second["max_epoch"], second["step"], second["max_step"]) == (1, 3, 10, 30)
    assert second["time_per_epoch"] == 1.25 and second["eta"] == 2.5


def test_non_finite_and_tensor_values_stay_valid_json(tmp_path):
    torch = pytest.importorskip("torch")
    writer = StatusWriter(tmp_path / "status.json")
    record = writer.write(
        "FAILURE",
        "loss diverged",
        verbosity="ERROR",
        kpi={"train_loss": float("nan"), "lr": torch.tensor(0.1), "big": float("inf")},
    )
    assert record["kpi"]["train_loss"] == "nan" and record["kpi"]["big"] == "inf"
    (line,) = read_status(tmp_path / "status.json")
    assert line["kpi"]["lr"] == pytest.approx(0.1)


def test_rejects_unknown_status_verbosity_and_fields(tmp_path):
    writer = StatusWriter(tmp_path / "status.json")
    with pytest.raises(ValueError, match="status must be one of"):
        writer.write("DONE", "x")
    with pytest.raises(ValueError, match="verbosity"):
        writer.write("RUNNING", "x", verbosity="DEBUG")
    with pytest.raises(TypeError, match="epochs"):
        writer.write("RUNNING", "x", epochs=1)
    assert read_status(tmp_path / "status.json") == []


def test_read_tolerates_a_truncated_last_line(tmp_path, caplog):
    path = tmp_path / "status.json"
    writer = StatusWriter(path)
    writer.write("STARTED", "a")
    writer.write("RUNNING", "b", epoch=1)
    with open(path, "a") as handle:  # a writer killed mid-line
        handle.write('{"date": "2025-01-01", "time": "00:0')
    records = read_status(path)
    assert [r["message"] for r in records] == ["a", "b"]
    assert not caplog.records  # silent for the last line


def test_read_skips_a_malformed_middle_line_with_a_warning(tmp_path, caplog):
    path = tmp_path / "status.json"
    path.write_text(
        '{"status": "STARTED", "message": "a"}\nnot json\n{"status": "RUNNING", "message": "b"}\n'
    )
    assert [r["message"] for r in read_status(path)] == ["a", "b"]
    assert "line 2" in caplog.text


def test_missing_file_reads_empty(tmp_path):
    assert read_status(tmp_path / "nope.json") == []


def test_concurrent_writers_never_interleave_lines(tmp_path):
    writer = StatusWriter(tmp_path / "status.json")
    message = "x" * 2000

    def work(i):
        for j in range(20):
            writer.write("RUNNING", message, epoch=i * 100 + j)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = read_status(tmp_path / "status.json")
    assert len(records) == 80 and all(r["message"] == message for r in records)


def test_a_new_writer_does_not_glue_its_line_to_a_truncated_one(tmp_path, caplog):
    path = tmp_path / "status.json"
    StatusWriter(path).write("RUNNING", "a")
    with open(path, "a") as handle:
        handle.write('{"date": "2025-01-01", "ti')
    StatusWriter(path).write("STARTED", "resumed")  # the next process
    assert [r["message"] for r in read_status(path)] == ["a", "resumed"]
