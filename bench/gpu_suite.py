"""The performance suite of issue 8: one command, one table (images/s, step time, peak memory, MFU,
the peer's figures from the same run, and the ratio ours / peer).

Cases: MAE pretraining vs HF ``ViTMAEForPreTraining``; the NVDINOv2 step (2 global + 8 local
crops, teacher included) on our ViT vs HF ``Dinov2Model``; that step with the crops packed into one
pass (``train.pack_crops``) vs two passes; the largest NVDINOv2 vit_l/14 batch at
518 px (CUDA only); the decode + multi-crop data pipeline vs the vit_s/14 step. MFU = analytic
model FLOPs/s (bench/README.md) / a dense matmul peak measured at the start (bf16 on CUDA).

    python bench/gpu_suite.py                    # CUDA, bf16 autocast + SDPA, < 10 min on an H200
    python bench/gpu_suite.py --device cpu --tiny  # the same code end to end at toy sizes
"""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import nvdinov2_step as nv
import torch
from suite_cases import DinoSizes, MaeSizes, Timing, dino_case, mae_case, memory_case, packing_case
from suite_common import Row, mae_vs_hf, matmul_peak, table
from suite_pipeline import data_case, onnx_cases

logger = logging.getLogger("bench.suite")
CASES = ("mae", "nvdinov2", "packing", "memory", "data", "onnx")


@dataclass(frozen=True)
class Profile:
    """Every size of one suite run."""

    mae: MaeSizes
    dino: DinoSizes
    memory: DinoSizes
    memory_arch: str
    memory_max_batch: int
    data_images: int
    data_image_size: int
    data_workers: int
    data_arch: str
    timing: Timing
    matmul_size: int
    onnx: tuple[str, str, int, int] | None = None  # dino arch, mae arch, img size, batch


def register_tiny_sizes() -> None:
    """Toy ViT sizes for the smoke runs, known to both peers' size tables."""
    mae_vs_hf.ARCHS.setdefault("vit_micro_patch16", (64, 2, 2, 16))
    nv.SIZES.setdefault("vit_micro", (64, 2, 2))


TINY_DINO = DinoSizes(
    archs=("vit_micro",), global_size=28, local_size=14, n_local=2, batch=2,
    prototypes=256, head_hidden=64, bottleneck=32,
)  # fmt: skip
TINY = Profile(
    mae=MaeSizes("vit_micro_patch16", img_size=32, batch=2, decoder=(32, 1, 2)),
    dino=TINY_DINO,
    memory=TINY_DINO,
    memory_arch="vit_micro",
    memory_max_batch=4,
    data_images=12,
    data_image_size=48,
    data_workers=1,
    data_arch="vit_micro",
    timing=Timing(warmup=1, per_round=1, rounds=2),
    matmul_size=256,
    onnx=("vit_micro", "vit_micro_patch16", 32, 2),
)
GPU_DINO = DinoSizes(archs=("vit_s", "vit_b"), global_size=224, local_size=98, n_local=8, batch=64)
GPU = Profile(
    mae=MaeSizes("vit_base_patch16", img_size=224, batch=256),
    dino=GPU_DINO,
    memory=replace(GPU_DINO, archs=("vit_l",), global_size=518),
    memory_arch="vit_l",
    memory_max_batch=64,
    data_images=1536,
    data_image_size=320,
    data_workers=max(1, min(14, (os.cpu_count() or 2) - 2)),
    data_arch="vit_s",
    timing=Timing(warmup=3, per_round=10, rounds=3),
    matmul_size=8192,
)


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown CPU",
    ) if Path("/proc/cpuinfo").exists() else platform.processor()  # fmt: skip
    return f"{model}, {torch.get_num_threads()} threads"


def run_suite(
    profile: Profile, device: torch.device, bf16: bool, cases: tuple[str, ...]
) -> tuple[str, list[Row]]:
    """Run ``cases`` at ``profile``'s sizes; returns (header line, rows)."""
    dtype = torch.bfloat16 if bf16 else torch.float32
    ceiling = matmul_peak(device, dtype, profile.matmul_size)
    now = datetime.datetime.now(datetime.UTC)
    header = (
        f"{now:%Y-%m-%d %H:%M} UTC, {hardware(device)}, torch {torch.__version__}, "
        f"{'bf16 autocast' if bf16 else 'fp32'}; dense {str(dtype).split('.')[1]} matmul peak "
        f"{ceiling / 1e12:.3f} TFLOP/s (MFU denominator); step time = median of {profile.timing.rounds} "
        f"interleaved rounds x {profile.timing.per_round} steps"
    )
    timing = profile.timing
    thunks = {
        "mae": lambda: [mae_case(profile.mae, device, bf16, ceiling, timing)],
        "nvdinov2": lambda: [dino_case(a, profile.dino, device, bf16, ceiling, timing) for a in profile.dino.archs],
        "packing": lambda: [packing_case(profile.dino.archs[0], profile.dino, device, bf16, ceiling, timing)],
        "memory": lambda: [memory_case(profile.memory_arch, profile.memory, device, profile.memory_max_batch)],
        "data": lambda: data_case(
            profile.data_arch, profile.dino, device, bf16,
            images=profile.data_images, image_size=profile.data_image_size, workers=profile.data_workers,
        ),
        "onnx": lambda: onnx_cases(*profile.onnx, timing=timing) if profile.onnx else [],
    }  # fmt: skip
    rows: list[Row] = []
    started = time.perf_counter()
    for name in CASES:
        if name in cases:
            case_start = time.perf_counter()
            rows += thunks[name]()
            logger.info("case %s took %.1f s", name, time.perf_counter() - case_start)
    logger.info("suite took %.0f s", time.perf_counter() - started)
    return header, rows


def parse_args(argv: list[str] | None = None, *, default_device: str | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=default_device or ("cuda" if torch.cuda.is_available() else "cpu"))
    p.add_argument("--tiny", action="store_true", help="toy sizes (the smoke test)")
    p.add_argument(
        "--precision", choices=("bf16", "fp32"), default=None, help="default: bf16 on cuda, else fp32"
    )
    p.add_argument("--cases", nargs="+", choices=CASES, default=None, help="subset of cases to run")
    p.add_argument("--out", type=Path, default=None, help="also write the header and table (Markdown) here")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.precision is None:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"
    return args


def report(header: str, rows: list[Row], out: Path | None) -> str:
    text = header + "\n\n" + table(rows) + "\n"
    print(text, flush=True)
    if out is not None:
        out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> str:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    register_tiny_sizes()
    profile = TINY if args.tiny else GPU
    cases = tuple(args.cases or [c for c in CASES if c != "onnx"])
    header, rows = run_suite(profile, device, args.precision == "bf16", cases)
    return report(header, rows, args.out)


if __name__ == "__main__":
    main()
