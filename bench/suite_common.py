"""Measurement helpers shared by ``gpu_suite.py`` and ``cpu_suite.py``: rows, timing, memory, FLOPs, table.

Timing: contenders run interleaved in one process (round r: k steps of each), and each side's step
time is the median over rounds, so load that drifts during the run hits every contender alike.
Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` after a reset; on CPU the growth of the
process's peak resident set (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``) over the RSS
before the steps, else n/a. FLOP counting is documented in ``bench/README.md``.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))
sys.path.insert(0, str(BENCH))

import mae_vs_hf  # noqa: E402  (bench/ sibling: the MAE pairing and the matmul ceiling)


@dataclass
class Side:
    """One contender's figures in a case (None: not measured)."""

    images_per_s: float | None = None
    step_ms: float | None = None
    peak_mib: float | None = None
    mfu: float | None = None


@dataclass
class Row:
    """One table row: a case, our figures, the peer's, the ratio ours / peer, a target and notes."""

    case: str
    batch: str
    ours: Side
    peer: Side = field(default_factory=Side)
    peer_name: str = ""
    target: str = ""
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours.images_per_s and self.peer.images_per_s:
            return self.ours.images_per_s / self.peer.images_per_s
        return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int) -> float:
    """Dense matmul FLOP/s (best of a few square products; see ``mae_vs_hf.matmul_flops``)."""
    args = type("Args", (), {"device": str(device)})()
    return mae_vs_hf.matmul_flops(args, dtype, max_size=size, repeats=5)


class PeakMemory:
    """Peak memory of a region in MiB: CUDA allocator peak, or CPU peak-RSS growth (None if unknown)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.base = 0.0
        self.peak: float | None = None

    @staticmethod
    def _status_kib(key: str) -> float | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return float(line.split()[1])
        except OSError:
            return None
        return None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        try:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
            Path("/proc/self/clear_refs").write_text("5")
            self.base = self._status_kib("VmRSS") or 0.0
        except OSError:
            self.base = -1.0
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif self.base >= 0:
            hwm = self._status_kib("VmHWM")
            self.peak = None if hwm is None else max(hwm - self.base, 0.0) / 1024


def interleaved(
    steps: dict[str, Callable[[], object]],
    device: torch.device,
    *,
    warmup: int,
    per_round: int,
    rounds: int,
) -> dict[str, tuple[float, float | None]]:
    """Median seconds per call and peak MiB of each callable, timed in interleaved rounds."""
    for fn in steps.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, float | None] = dict.fromkeys(steps)
    for _ in range(rounds):
        for name, fn in steps.items():
            with PeakMemory(device) as memory:
                sync(device)
                start = time.perf_counter()
                for _ in range(per_round):
                    fn()
                sync(device)
                times[name].append((time.perf_counter() - start) / per_round)
            if memory.peak is not None:
                peaks[name] = max(peaks[name] or 0.0, memory.peak)
    return {name: (statistics.median(t), peaks[name]) for name, t in times.items()}


def side(seconds: float, peak: float | None, images: int, flops: float | None, ceiling: float) -> Side:
    """A contender's figures from its median step time (``flops``: model FLOPs of one step)."""
    mfu = flops / seconds / ceiling if flops is not None and ceiling > 0 else None
    return Side(images / seconds, seconds * 1e3, peak, mfu)


def vit_forward_flops(
    tokens: int, patches: int, dim: int, depth: int, patch: int, mlp_ratio: float = 4
) -> float:
    """Forward FLOPs (2 per multiply-add) of a pre-norm ViT on one image: patch embedding of
    ``patches`` patches, then ``depth`` blocks on ``tokens`` tokens (qkv, proj, MLP, QK^T, AV)."""
    hidden = int(dim * mlp_ratio)
    blocks = depth * (2 * tokens * (4 * dim * dim + 2 * dim * hidden) + 4 * tokens * tokens * dim)
    return 2 * patches * patch * patch * 3 * dim + blocks


def dino_head_flops(
    rows: int, dim: int, hidden: int, bottleneck: int, prototypes: int, layers: int = 3
) -> float:
    """Forward FLOPs of a DINO head (MLP dim -> hidden ... -> bottleneck, then the prototype layer)."""
    widths = [dim] + [hidden] * (layers - 1) + [bottleneck, prototypes]
    return 2 * rows * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def _fmt(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


COLUMNS = (
    "case", "batch", "img/s", "step ms", "peak MiB", "MFU",
    "peer", "peer img/s", "peer step ms", "peer peak MiB", "peer MFU", "ratio", "target", "note",
)  # fmt: skip


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table (one line per case)."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [r.case, r.batch]
        for s in (r.ours, r.peer):
            # 4 significant digits: toy CPU runs give tiny values that fixed decimals would round to 0
            cells += [_fmt(s.images_per_s, ".4g"), _fmt(s.step_ms, ".4g"), _fmt(s.peak_mib, ".0f")]
            cells.append(_fmt(None if s.mfu is None else 100 * s.mfu, ".3g", " %"))
            if s is r.ours:
                cells.append(r.peer_name or "-")
        cells += [_fmt(r.ratio, ".3f", "x"), r.target or "-", r.note or "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
