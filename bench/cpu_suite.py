"""The suite of ``gpu_suite.py`` at small sizes on a CPU (the CI machine), plus ONNX Runtime vs eager
PyTorch inference of the exported backbones (target >= 1.3x).

Read the ratios, not the absolutes: every pairing runs interleaved in one process (median of
several rounds) so machine load hits both sides alike. Precision is fp32 (a CPU without
AVX512-BF16/AMX runs bf16 matmuls ~50x slower, see bench/README.md), the MFU denominator the
fp32 matmul peak. The memory case needs CUDA and prints a skip line.

    python bench/cpu_suite.py            # small sizes, a few minutes on 2 cores
    python bench/cpu_suite.py --tiny     # toy sizes (the smoke test)
"""

from __future__ import annotations

import logging

import torch
from gpu_suite import CASES, TINY, Profile, parse_args, register_tiny_sizes, report, run_suite
from suite_cases import DinoSizes, MaeSizes, Timing

SMALL_DINO = DinoSizes(
    archs=("vit_t",), global_size=56, local_size=28, n_local=8, batch=4,
    prototypes=4096, head_hidden=256, bottleneck=64,
)  # fmt: skip
SMALL = Profile(
    mae=MaeSizes("vit_tiny_patch16", img_size=64, batch=8, decoder=(128, 2, 4)),
    dino=SMALL_DINO,
    memory=SMALL_DINO,
    memory_arch="vit_t",
    memory_max_batch=16,
    data_images=96,
    data_image_size=128,
    data_workers=2,
    data_arch="vit_t",
    timing=Timing(warmup=3, per_round=2, rounds=5),
    matmul_size=1024,
    onnx=("vit_t", "vit_tiny_patch16", 112, 4),
)


def main(argv: list[str] | None = None) -> str:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv, default_device="cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    register_tiny_sizes()
    profile = TINY if args.tiny else SMALL
    header, rows = run_suite(
        profile, torch.device(args.device), args.precision == "bf16", args.cases or CASES
    )
    return report(header, rows, args.out)


if __name__ == "__main__":
    main()
