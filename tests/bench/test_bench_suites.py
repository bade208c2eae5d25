"""Smoke runs of bench/gpu_suite.py (``--device cpu --tiny``) and bench/cpu_suite.py (``--tiny``), and
the analytic FLOP counts of bench/README.md checked against torch's FLOP counter."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import cpu_suite  # noqa: E402
import gpu_suite  # noqa: E402
import nvdinov2_step as nv  # noqa: E402
import suite_cases  # noqa: E402
import suite_common  # noqa: E402

pytestmark = pytest.mark.integration

TRAIN_CASES = (
    "mae ", "nvdinov2 ", "packing: ", "memory: ", "data (colour in the workers)", "data (colour on the device)",
)  # fmt: skip
ONNX_CASES = ("onnx: nvdinov2 ", "onnx: mae ")


def _rows(text: str) -> dict[str, list[str]]:
    """Table rows of a suite's output by case name (the first cell)."""
    rows = {}
    for line in text.splitlines():
        if line.startswith("| ") and not line.startswith("| case "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            assert len(cells) == len(suite_common.COLUMNS), line
            rows[cells[0]] = cells
    return rows


def _row(rows: dict[str, list[str]], prefix: str) -> dict[str, str]:
    matches = [cells for case, cells in rows.items() if case.startswith(prefix)]
    assert len(matches) == 1, f"expected one {prefix!r} row in {list(rows)}"
    return dict(zip(suite_common.COLUMNS, matches[0], strict=True))


def _positive(cell: str) -> float:
    value = float(cell.rstrip("x% ").strip())
    assert math.isfinite(value) and value > 0, cell
    return value


def _check_training_rows(rows: dict[str, list[str]]) -> None:
    for prefix in ("mae ", "nvdinov2 ", "packing: "):
        row = _row(rows, prefix)
        for column in ("img/s", "step ms", "MFU", "peer img/s", "peer step ms", "peer MFU", "ratio"):
            _positive(row[column])
        ratio = _positive(row["img/s"]) / _positive(row["peer img/s"])
        assert float(row["ratio"].rstrip("x")) == pytest.approx(ratio, rel=0.01)
    assert "skipped: needs a CUDA device" in _row(rows, "memory: ")["note"]
    for prefix in ("data (colour in the workers)", "data (colour on the device)"):
        data = _row(rows, prefix)
        _positive(data["img/s"])
        assert "data wait" in data["note"]


def test_gpu_suite_runs_on_cpu_with_every_case(tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    text = gpu_suite.main(["--device", "cpu", "--tiny", "--out", str(out)])
    rows = _rows(text)
    assert len(rows) == len(TRAIN_CASES)  # the CPU run of the GPU suite has no ONNX rows
    _check_training_rows(rows)
    assert "fp32" in text.splitlines()[0] and "matmul peak" in text.splitlines()[0]
    assert out.read_text() == text


def test_cpu_suite_adds_onnx_rows() -> None:
    rows = _rows(cpu_suite.main(["--tiny"]))
    assert len(rows) == len(TRAIN_CASES) + len(ONNX_CASES)
    _check_training_rows(rows)
    for prefix in ONNX_CASES:
        row = _row(rows, prefix)
        assert row["peer"] == "eager PyTorch fp32"
        _positive(row["ratio"])


def _counted(fn) -> int:
    # The math SDPA backend runs attention as matmuls, which the counter sees (the fused CPU
    # flash kernel is not counted).
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def test_vit_and_mae_forward_flops_match_torch_counter() -> None:
    from foveal.nn.registry import create_backbone

    vit = create_backbone("vit_s", img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=2)
    x = torch.randn(3, 3, 56, 56)
    assert _counted(lambda: vit.forward_features(x)) == 3 * suite_common.vit_forward_flops(17, 16, 64, 2, 14)

    gpu_suite.register_tiny_sizes()
    args = argparse.Namespace(
        arch="vit_micro_patch16", img_size=64, decoder_dim=32, decoder_depth=1, decoder_heads=2,
        mask_ratio=0.75, device="cpu", precision="fp32",
    )  # fmt: skip
    ours, _, cfg = suite_common.mae_vs_hf.build_models(args)
    images = torch.randn(2, 3, 64, 64)
    assert _counted(lambda: ours(images)) == suite_common.mae_vs_hf.forward_flops(cfg, 2)


def test_dino_step_flops_match_torch_counter() -> None:
    """Counted step = analytic (3 x forward) minus the patch embedding's input gradient, which
    backward never computes (the convention overcounts it), plus KoLeo's small pairwise matmul."""
    gpu_suite.register_tiny_sizes()
    sizes = gpu_suite.TINY_DINO
    method, optimizer = suite_cases.build_dino("ours", "vit_micro", sizes, torch.device("cpu"))
    args = suite_cases._nv_args(sizes, sizes.batch, bf16=False)
    batch = nv.make_batch(args, torch.device("cpu"))
    counted = _counted(lambda: nv.step(method, optimizer, batch, args))
    analytic = suite_cases.dino_step_flops("vit_micro", sizes, sizes.batch, int(batch["masks"].sum()))
    dim = nv.SIZES["vit_micro"][0]
    patch_pixels = 3 * suite_cases.PATCH**2
    crops = [(sizes.n_global, sizes.global_size), (sizes.n_local, sizes.local_size)]
    student_patch_embed = sum(
        n * sizes.batch * 2 * (size // suite_cases.PATCH) ** 2 * patch_pixels * dim for n, size in crops
    )
    koleo = sizes.n_global * 2 * sizes.batch**2 * dim
    assert counted == analytic - student_patch_embed + koleo


def test_memory_probe_doubles_then_retries_with_checkpointing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA-only memory case, with the model and the step faked: plain training fits up to
    batch 4, activation checkpointing up to 16; the probe must report 16, and 4 without."""
    tried: list[tuple[bool, int]] = []

    class Backbone:
        checkpointing = False

        def set_grad_checkpointing(self, enable: bool) -> None:
            self.checkpointing = enable

    def fake_build(kind, arch, sizes, device):
        return type("Method", (), {"student": {"backbone": Backbone()}})(), None

    def fake_fits(method, optimizer, sizes, batch, device):
        checkpointing = method.student["backbone"].checkpointing
        tried.append((checkpointing, batch))
        return (0.5, 1000.0 * batch) if batch <= (16 if checkpointing else 4) else None

    monkeypatch.setattr(suite_cases, "build_dino", fake_build)
    monkeypatch.setattr(suite_cases, "_fits", fake_fits)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    row = suite_cases.memory_case("vit_l", gpu_suite.GPU.memory, torch.device("cuda"), max_batch=64)
    assert row.batch == "16"
    assert "without: 4" in row.note
    assert row.ours.peak_mib == 16000.0 and row.ours.images_per_s == pytest.approx(32.0)
    # plain: 1, 2, 4 fit, 8 fails; checkpointing starts at 4: 4, 8, 16 fit, 32 fails
    assert tried == [
        (False, 1),
        (False, 2),
        (False, 4),
        (False, 8),
        (True, 4),
        (True, 8),
        (True, 16),
        (True, 32),
    ]
