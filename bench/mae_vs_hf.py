"""MAE pretraining throughput: Foveal's MaskedAutoencoderViT vs Hugging Face ViTMAEForPreTraining.

Both models get the same architecture and weights (ours is converted from the HF model), the same
batch, mask ratio, precision and optimizer (AdamW, betas 0.9/0.95). Timed steps alternate between
the two in one process (ours k steps, theirs k steps, repeated), and each side's step time is the
median over rounds, so drifting machine load hits both alike. FLOPs are counted analytically
(see bench/README.md) and compared with a plain matmul measured in the same run.

    python bench/mae_vs_hf.py                       # vit_base_patch16, 224 px, batch 8, fp32
    python bench/mae_vs_hf.py --precision bf16 --batch 16
    python bench/mae_vs_hf.py --device cuda --precision bf16 --batch 256 --compile
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from foveal.networks.mae.convert_hf import mae_vit_from_hf_pretraining  # noqa: E402

# arch -> (embed_dim, depth, heads, patch): the MAE encoders of foveal.nn's registry.
ARCHS = {
    "vit_tiny_patch16": (192, 12, 3, 16),
    "vit_small_patch16": (384, 12, 6, 16),
    "vit_base_patch16": (768, 12, 12, 16),
    "vit_large_patch16": (1024, 24, 16, 16),
    "vit_huge_patch14": (1280, 32, 16, 14),
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="vit_base_patch16", choices=sorted(ARCHS))
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"))
    p.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per model first")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--decoder-dim", type=int, default=512)
    p.add_argument("--decoder-depth", type=int, default=8)
    p.add_argument("--decoder-heads", type=int, default=16)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (both reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    return p.parse_args()


def build_models(args: argparse.Namespace) -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    dim, depth, heads, patch = ARCHS[args.arch]
    config = ViTMAEConfig(
        hidden_size=dim,
        num_hidden_layers=depth,
        num_attention_heads=heads,
        intermediate_size=4 * dim,
        image_size=args.img_size,
        patch_size=patch,
        decoder_hidden_size=args.decoder_dim,
        decoder_num_hidden_layers=args.decoder_depth,
        decoder_num_attention_heads=args.decoder_heads,
        decoder_intermediate_size=4 * args.decoder_dim,
        mask_ratio=args.mask_ratio,
        norm_pix_loss=True,
        attn_implementation="sdpa",  # HF's fastest attention on CPU and the usual GPU choice
    )
    theirs = ViTMAEForPreTraining(config)
    ours = mae_vit_from_hf_pretraining(theirs.state_dict(), config.to_dict())
    return ours.to(args.device).train(), theirs.to(args.device).train(), config.to_dict()


def forward_flops(cfg: dict, batch: int) -> float:
    """Multiply-add FLOPs (2 per MAC) of one forward pass; matmuls and attention only."""
    p, c = cfg["patch_size"], cfg["num_channels"]
    n = (cfg["image_size"] // p) ** 2
    keep = int(n * (1 - cfg["mask_ratio"]))

    def blocks(tokens: int, dim: int, hidden: int, depth: int) -> float:
        linear = 2 * tokens * (4 * dim * dim + 2 * dim * hidden)  # qkv + proj + MLP
        attention = 4 * tokens * tokens * dim  # QK^T and AV
        return depth * (linear + attention)

    d, dd = cfg["hidden_size"], cfg["decoder_hidden_size"]
    total = 2 * n * p * p * c * d  # patch embedding (all patches, before masking)
    total += blocks(1 + keep, d, cfg["intermediate_size"], cfg["num_hidden_layers"])
    total += 2 * (1 + keep) * d * dd  # decoder_embed
    total += blocks(1 + n, dd, cfg["decoder_intermediate_size"], cfg["decoder_num_hidden_layers"])
    total += 2 * n * dd * p * p * c  # prediction head
    return batch * total


def autocast(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    if args.precision == "bf16":
        return torch.autocast(args.device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(args: argparse.Namespace) -> None:
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()


def make_step(model: torch.nn.Module, hf: bool, args: argparse.Namespace):
    # The same fused AdamW for both (CPU and CUDA): the comparison is about the models.
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), fused=True)

    def step(images: torch.Tensor) -> float:
        with autocast(args):
            loss = model(pixel_values=images).loss if hf else model(images)[0]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def time_steps(step, images: torch.Tensor, steps: int, args: argparse.Namespace) -> float:
    sync(args)
    start = time.perf_counter()
    for _ in range(steps):
        step(images)
    sync(args)
    return (time.perf_counter() - start) / steps


def matmul_flops(
    args: argparse.Namespace, dtype: torch.dtype, max_size: int = 2048, repeats: int = 3
) -> float:
    """Best-of FLOP/s of a plain square matmul: the practical ceiling.

    The side doubles from 256 up to ``max_size`` while one product takes under 0.1 s, so that
    a dtype the CPU has no instructions for (bf16 without AVX512-BF16/AMX runs ~50x slower)
    does not take minutes.
    """
    size = 256
    while True:
        a = torch.randn(size, size, device=args.device, dtype=dtype)
        b = torch.randn(size, size, device=args.device, dtype=dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            sync(args)
            start = time.perf_counter()
            a @ b
            sync(args)
            best = min(best, time.perf_counter() - start)
        if size >= max_size or best > 0.1:
            return 2 * size**3 / best
        size *= 2


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ours, theirs, cfg = build_models(args)
    images = torch.randn(args.batch, 3, args.img_size, args.img_size, device=args.device)
    runners = {"foveal": make_step(ours, False, args), "hf": make_step(theirs, True, args)}
    if args.compile:
        compiled = torch.compile(ours)
        runners["foveal+compile"] = make_step(compiled, False, args)
    for step in runners.values():
        for _ in range(args.warmup):
            step(images)
    times: dict[str, list[float]] = {name: [] for name in runners}
    ceilings = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        for name, step in runners.items():
            times[name].append(time_steps(step, images, args.steps, args))
        ceilings["fp32"].append(matmul_flops(args, torch.float32))
        if args.precision == "bf16":
            ceilings["bf16"].append(matmul_flops(args, torch.bfloat16))
    flops = 3 * forward_flops(cfg, args.batch)  # backward ~ 2x forward
    print(
        f"{args.arch} {args.img_size}px batch {args.batch} {args.precision} on {args.device} "
        f"({torch.get_num_threads()} threads), mask {args.mask_ratio}, decoder "
        f"{args.decoder_depth}x{args.decoder_dim}; {flops / 1e9:.1f} GFLOP per train step; "
        f"{args.rounds} rounds x {args.steps} steps, medians"
    )
    fp32_ceiling = statistics.median(ceilings["fp32"])
    line = f"  plain fp32 matmul: {fp32_ceiling / 1e9:.1f} GFLOP/s"
    if ceilings["bf16"]:
        line += f"; bf16 matmul: {statistics.median(ceilings['bf16']) / 1e9:.1f} GFLOP/s"
    print(line)
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, seconds in medians.items():
        achieved = flops / seconds
        print(
            f"  {name:15s} {seconds * 1e3:9.1f} ms/step  {args.batch / seconds:8.2f} img/s  "
            f"{achieved / 1e9:7.1f} GFLOP/s = {achieved / fp32_ceiling:.0%} of the fp32 matmul"
        )
    for name in medians:
        if name != "hf":
            print(f"  ratio {name} / hf: {medians['hf'] / medians[name]:.3f}x images/s")


if __name__ == "__main__":
    main()
