"""NVDINOv2 training throughput: our ViT vs Hugging Face ``Dinov2Model`` inside the same method.

One training step = the full nvdinov2 step of :class:`NVDINOv2Method`: teacher forward on the
global crops (no grad) with centering, student forward on all crops with iBOT block masks, DINO +
iBOT + KoLeo losses, backward, AdamW step, EMA teacher update. Both contenders run exactly this
code; only the backbone differs: ours (``foveal.nn.VisionTransformer`` from the registry) or a
Hugging Face ``Dinov2Model`` of the same size built from a random config with
``attn_implementation="sdpa"`` (no hub download), adapted to ``forward_features``.
Throughput is images/s where one image is all of its crops.

Interleaved in one process: each round times ``--steps`` steps of ours then of HF; the median
over ``--rounds`` is reported, with the ratio ours / HF.

    python bench/nvdinov2_step.py                              # CPU: --small sizes by default
    python bench/nvdinov2_step.py --full                       # vit_s/14, 2 x 224 + 8 x 98 (slow on CPU)
    python bench/nvdinov2_step.py --device cuda                # vit_s/14 and vit_b/14, bf16 autocast
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from foveal.networks.nvdinov2.masking import BlockMaskGenerator, sample_masks  # noqa: E402
from foveal.networks.nvdinov2.method import MethodSettings, NVDINOv2Method  # noqa: E402
from foveal.nn.registry import create_backbone  # noqa: E402

# name -> (embed_dim, depth, heads), DINOv2's sizes
SIZES = {"vit_t": (192, 12, 3), "vit_s": (384, 12, 6), "vit_b": (768, 12, 12), "vit_l": (1024, 24, 16)}


class HFBackbone(nn.Module):
    """``Dinov2Model`` behind our ``forward_features`` interface (CLS and patch tokens after the norm)."""

    def __init__(self, arch: str, img_size: int, patch: int) -> None:
        super().__init__()
        from transformers import Dinov2Config, Dinov2Model

        dim, depth, heads = SIZES[arch]
        config = Dinov2Config(
            hidden_size=dim,
            num_hidden_layers=depth,
            num_attention_heads=heads,
            mlp_ratio=4,
            image_size=img_size,
            patch_size=patch,
            layerscale_value=1e-5,
            drop_path_rate=0.0,
            attn_implementation="sdpa",
        )
        self.model = Dinov2Model(config)
        self.embed_dim = dim

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict:
        out = self.model(pixel_values=x, bool_masked_pos=masks).last_hidden_state
        return {"x_norm_clstoken": out[:, 0], "x_norm_patchtokens": out[:, 1:]}


def build(
    kind: str, args: argparse.Namespace, arch: str, device: torch.device
) -> tuple[NVDINOv2Method, torch.optim.Optimizer]:
    settings = MethodSettings(
        num_prototypes=args.prototypes,
        head_hidden_dim=args.hidden,
        head_bottleneck_dim=args.bottleneck,
        n_global_crops=args.n_global,
    )

    def backbone() -> nn.Module:
        if kind == "hf":
            return HFBackbone(arch, args.global_size, args.patch)
        return create_backbone(arch, img_size=args.global_size, patch_size=args.patch)

    method = NVDINOv2Method(backbone(), backbone(), settings).to(device).train()
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=1e-4, weight_decay=0.04)
    return method, optimizer


def make_batch(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    b, grid = args.batch, args.global_size // args.patch
    masks = sample_masks(args.n_global * b, BlockMaskGenerator((grid, grid)), 0.1, 0.5, 0.5)
    return {
        "global_crops": torch.randn(args.n_global * b, 3, args.global_size, args.global_size, device=device),
        "local_crops": torch.randn(args.n_local * b, 3, args.local_size, args.local_size, device=device),
        "masks": masks.to(device),
    }


def step(
    method: NVDINOv2Method, optimizer: torch.optim.Optimizer, batch: dict, args: argparse.Namespace
) -> None:
    with torch.autocast(
        batch["global_crops"].device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16"
    ):
        loss, _ = method(batch, teacher_temp=0.07)
    loss.backward()
    for part in method.student.values():
        nn.utils.clip_grad_norm_(part.parameters(), 3.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    method.update_ema(0.994)


def timed(method, optimizer, batch, args, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step(method, optimizer, batch, args)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / args.steps


def run(arch: str, args: argparse.Namespace, device: torch.device) -> None:
    torch.manual_seed(0)
    batch = make_batch(args, device)
    contenders = {kind: build(kind, args, arch, device) for kind in ("ours", "hf")}
    for method, optimizer in contenders.values():
        for _ in range(args.warmup):
            step(method, optimizer, batch, args)
    times: dict[str, list[float]] = {kind: [] for kind in contenders}
    for _ in range(args.rounds):
        for kind, (method, optimizer) in contenders.items():
            times[kind].append(timed(method, optimizer, batch, args, device))
    rate = {kind: args.batch / statistics.median(t) for kind, t in times.items()}
    crops = f"{args.n_global}x{args.global_size} + {args.n_local}x{args.local_size}"
    print(
        f"{arch}/{args.patch} {crops} batch {args.batch} {args.precision} on {device.type}: "
        f"ours {rate['ours']:.1f} img/s ({1000 * statistics.median(times['ours']):.0f} ms/step), "
        f"HF Dinov2Model {rate['hf']:.1f} img/s ({1000 * statistics.median(times['hf']):.0f} ms/step), "
        f"ratio ours/HF {rate['ours'] / rate['hf']:.3f}"
    )


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", nargs="+", default=None, help="default: vit_t (CPU small), vit_s vit_b (cuda)")
    p.add_argument("--full", action="store_true", help="on CPU: DINOv2's sizes instead of --small ones")
    p.add_argument("--patch", type=int, default=14)
    p.add_argument("--global-size", type=int, default=None)
    p.add_argument("--local-size", type=int, default=None)
    p.add_argument("--n-global", type=int, default=2)
    p.add_argument("--n-local", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--prototypes", type=int, default=None)
    p.add_argument("--hidden", type=int, default=None)
    p.add_argument("--bottleneck", type=int, default=None)
    p.add_argument(
        "--precision", choices=("fp32", "bf16"), default=None, help="default: bf16 on cuda, fp32 on cpu"
    )
    p.add_argument("--steps", type=int, default=None, help="timed steps per model per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    small = args.device == "cpu" and not args.full
    defaults = (
        {
            "arch": ["vit_t"],
            "global_size": 112,
            "local_size": 56,
            "n_local": 4,
            "batch": 8,
            "prototypes": 4096,
            "hidden": 512,
            "bottleneck": 128,
            "steps": 2,
        }
        if small
        else {
            "arch": ["vit_s"] if args.device == "cpu" else ["vit_s", "vit_b"],
            "global_size": 224,
            "local_size": 98,
            "n_local": 8,
            "batch": 2 if args.device == "cpu" else 64,
            "prototypes": 65536,
            "hidden": 2048,
            "bottleneck": 256,
            "steps": 1 if args.device == "cpu" else 10,
        }
    )
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.precision is None:
        args.precision = "bf16" if args.device.startswith("cuda") else "fp32"
    return args


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    for arch in args.arch:
        run(arch, args, device)


if __name__ == "__main__":
    main()
