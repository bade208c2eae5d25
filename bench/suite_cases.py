"""Training-step cases of the benchmark suite: MAE pretraining, the NVDINOv2 step, the memory probe.

MAE (He et al., arXiv:2111.06377): ours (``MaskedAutoencoderViT``) vs Hugging Face
``ViTMAEForPreTraining`` (SDPA), paired, weights shared and stepped by ``bench/mae_vs_hf.py``.
NVDINOv2 (Oquab et al., arXiv:2304.07193): the whole ``NVDINOv2Method`` step on our ViT vs on a
Hugging Face ``Dinov2Model`` (``bench/nvdinov2_step.py``'s ``HFBackbone`` and ``step``).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass

import nvdinov2_step as nv  # bench/ sibling: the HF Dinov2Model peer and the shared step
import torch
from suite_common import Row, Side, dino_head_flops, interleaved, mae_vs_hf, side, vit_forward_flops

from foveal.networks.nvdinov2.method import MethodSettings, NVDINOv2Method
from foveal.nn.registry import create_backbone

logger = logging.getLogger("bench.suite")
PATCH = 14


@dataclass(frozen=True)
class Timing:
    warmup: int
    per_round: int
    rounds: int


@dataclass(frozen=True)
class MaeSizes:
    arch: str  # a key of mae_vs_hf.ARCHS
    img_size: int
    batch: int
    decoder: tuple[int, int, int] = (512, 8, 16)  # width, depth, heads (MAE's)
    mask_ratio: float = 0.75


@dataclass(frozen=True)
class DinoSizes:
    archs: tuple[str, ...]  # keys of nvdinov2_step.SIZES
    global_size: int
    local_size: int
    n_local: int
    batch: int
    prototypes: int = 65536
    head_hidden: int = 2048
    bottleneck: int = 256
    n_global: int = 2


def mae_case(s: MaeSizes, device: torch.device, bf16: bool, ceiling: float, timing: Timing) -> Row:
    """Ours vs ``ViTMAEForPreTraining``: same architecture, weights, batch, mask ratio, fused AdamW."""
    args = argparse.Namespace(
        arch=s.arch,
        img_size=s.img_size,
        decoder_dim=s.decoder[0],
        decoder_depth=s.decoder[1],
        decoder_heads=s.decoder[2],
        mask_ratio=s.mask_ratio,
        device=str(device),
        precision="bf16" if bf16 else "fp32",
    )
    torch.manual_seed(0)
    ours, theirs, cfg = mae_vs_hf.build_models(args)
    images = torch.randn(s.batch, 3, s.img_size, s.img_size, device=device)
    steps = {name: mae_vs_hf.make_step(m, name == "hf", args) for name, m in (("ours", ours), ("hf", theirs))}
    measured = interleaved({k: (lambda f=f: f(images)) for k, f in steps.items()}, device, **vars(timing))
    flops = 3 * mae_vs_hf.forward_flops(cfg, s.batch)
    ours_side, hf_side = (side(*measured[k], s.batch, flops, ceiling) for k in ("ours", "hf"))
    del ours, theirs, steps
    return Row(
        case=f"mae {s.arch} {s.img_size}px mask {s.mask_ratio} dec {s.decoder[1]}x{s.decoder[0]}",
        batch=str(s.batch),
        ours=ours_side,
        peer=hf_side,
        peer_name="HF ViTMAEForPreTraining (sdpa)",
        target="MFU >= 50 %, ratio >= 1.5x",
        note=f"{flops / s.batch / 1e9:.3g} GFLOP/img/step",
    )


def _nv_args(s: DinoSizes, batch: int, bf16: bool) -> argparse.Namespace:
    """The namespace ``nvdinov2_step.make_batch`` / ``step`` read."""
    return argparse.Namespace(
        batch=batch,
        n_global=s.n_global,
        n_local=s.n_local,
        global_size=s.global_size,
        local_size=s.local_size,
        patch=PATCH,
        precision="bf16" if bf16 else "fp32",
    )


def build_dino(
    kind: str, arch: str, s: DinoSizes, device: torch.device
) -> tuple[NVDINOv2Method, torch.optim.Optimizer]:
    """The method on our ViT (``kind="ours"``; ``"packed"``: its crops in one packed pass) or on HF
    ``Dinov2Model`` (``"hf"``), fused AdamW."""
    dim, depth, heads = nv.SIZES[arch]
    settings = MethodSettings(
        num_prototypes=s.prototypes,
        head_hidden_dim=s.head_hidden,
        head_bottleneck_dim=s.bottleneck,
        n_global_crops=s.n_global,
        pack_crops=kind == "packed",
    )

    def backbone() -> torch.nn.Module:
        if kind == "hf":
            return nv.HFBackbone(arch, s.global_size, PATCH)
        # explicit sizes so that a size registered only in nv.SIZES (the tiny profiles) builds too
        return create_backbone(
            "vit_s", img_size=s.global_size, patch_size=PATCH, embed_dim=dim, depth=depth, num_heads=heads
        )

    method = NVDINOv2Method(backbone(), backbone(), settings).to(device).train()
    fused = device.type in ("cuda", "cpu")
    optimizer = torch.optim.AdamW(method.student.parameters(), lr=1e-4, weight_decay=0.04, fused=fused)
    return method, optimizer


def dino_step_flops(arch: str, s: DinoSizes, batch: int, masked: int, registers: int = 0) -> float:
    """Model FLOPs of one nvdinov2 step: teacher forward (global crops, heads on class tokens and
    masked patches) + 3 x the student forward (all crops, heads); see bench/README.md."""
    dim, depth, _ = nv.SIZES[arch]
    n_g, n_l = (s.global_size // PATCH) ** 2, (s.local_size // PATCH) ** 2
    vit_g = vit_forward_flops(1 + registers + n_g, n_g, dim, depth, PATCH)
    vit_l = vit_forward_flops(1 + registers + n_l, n_l, dim, depth, PATCH)
    heads = (s.head_hidden, s.bottleneck, s.prototypes)
    n_glob, n_loc = s.n_global * batch, s.n_local * batch
    teacher = n_glob * vit_g + dino_head_flops(n_glob + masked, dim, *heads)
    student = n_glob * vit_g + n_loc * vit_l + dino_head_flops(n_glob + n_loc + masked, dim, *heads)
    return teacher + 3 * student


def _interleaved_pair(
    kinds: tuple[str, str], arch: str, s: DinoSizes, device: torch.device, bf16: bool, ceiling: float,
    timing: Timing,
) -> tuple[Side, Side, float]:
    """The full nvdinov2 step (teacher included) of two `build_dino` kinds on the same batch,
    interleaved: (first's side, second's side, model FLOPs of one step)."""
    torch.manual_seed(0)
    args = _nv_args(s, s.batch, bf16)
    batch = nv.make_batch(args, device)
    contenders = {kind: build_dino(kind, arch, s, device) for kind in kinds}
    steps = {k: (lambda m=m, o=o: nv.step(m, o, batch, args)) for k, (m, o) in contenders.items()}
    measured = interleaved(steps, device, **vars(timing))
    registers = contenders[kinds[0]][0].student["backbone"].num_register_tokens
    flops = dino_step_flops(arch, s, s.batch, int(batch["masks"].sum()), registers)
    first, second = (side(*measured[k], s.batch, flops, ceiling) for k in kinds)
    del contenders, steps
    return first, second, flops


def dino_case(
    arch: str, s: DinoSizes, device: torch.device, bf16: bool, ceiling: float, timing: Timing
) -> Row:
    """The full nvdinov2 step (teacher included) on our ViT vs HF ``Dinov2Model``, interleaved."""
    ours_side, hf_side, flops = _interleaved_pair(("ours", "hf"), arch, s, device, bf16, ceiling, timing)
    return Row(
        case=f"nvdinov2 {arch}/14 {s.n_global}x{s.global_size} + {s.n_local}x{s.local_size}",
        batch=str(s.batch),
        ours=ours_side,
        peer=hf_side,
        peer_name="HF Dinov2Model (sdpa), same method",
        target="MFU >= 40 % (vit_b)" if arch == "vit_b" else "",
        note=f"{flops / s.batch / 1e9:.3g} GFLOP/img/step; teacher fwd included",
    )


def packing_case(
    arch: str, s: DinoSizes, device: torch.device, bf16: bool, ceiling: float, timing: Timing
) -> Row:
    """train.pack_crops: the nvdinov2 step with the student's crops in one packed pass
    (block-diagonal attention) vs the same ViT in two passes, interleaved."""
    packed, separate, _ = _interleaved_pair(("packed", "ours"), arch, s, device, bf16, ceiling, timing)
    return Row(
        case=f"packing: nvdinov2 {arch}/14 crops in one pass (train.pack_crops)",
        batch=str(s.batch),
        ours=packed,
        peer=separate,
        peer_name="same ViT, global and local crops in two passes",
        target="ratio > 1 to turn it on by default",
        note="one packed sequence, SDPA per crop size",
    )


def _out_of_memory(exc: BaseException) -> bool:
    # cuBLAS/cuDNN workspace failures surface as plain RuntimeErrors
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _fits(method, optimizer, s: DinoSizes, batch: int, device: torch.device) -> tuple[float, float] | None:
    """(seconds, peak MiB) of a step at ``batch`` (the second of two), or None when memory runs out."""
    args = _nv_args(s, batch, bf16=True)
    torch.cuda.reset_peak_memory_stats(device)
    try:
        data = nv.make_batch(args, device)
        nv.step(method, optimizer, data, args)
        torch.cuda.synchronize(device)
        events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        events[0].record()
        nv.step(method, optimizer, data, args)
        events[1].record()
        torch.cuda.synchronize(device)
        return events[0].elapsed_time(events[1]) / 1e3, torch.cuda.max_memory_allocated(device) / 2**20
    except RuntimeError as exc:
        if not _out_of_memory(exc):
            raise
        return None
    finally:
        optimizer.zero_grad(set_to_none=True)
        data = None
        torch.cuda.empty_cache()


def memory_case(arch: str, s: DinoSizes, device: torch.device, max_batch: int) -> Row:
    """Largest nvdinov2 batch that trains (bf16) by doubling, without then with activation checkpointing."""
    if device.type != "cuda":
        return Row(
            case=f"memory: nvdinov2 {arch}/14 at {s.global_size}",
            batch="n/a",
            ours=Side(),
            target="batch >= 16",
            note="skipped: needs a CUDA device",
        )
    largest: dict[bool, tuple[int, float, float]] = {}  # checkpointing -> (batch, seconds, peak MiB)
    for checkpointing in (False, True):
        method, optimizer = build_dino("ours", arch, s, device)
        method.student["backbone"].set_grad_checkpointing(checkpointing)
        batch = largest.get(False, (1,))[0]  # checkpointing needs less memory: start where plain ended
        while batch <= max_batch:
            fits = _fits(method, optimizer, s, batch, device)
            if fits is None:
                break
            largest[checkpointing] = (batch, *fits)
            logger.info("memory probe: %s batch %d fits (checkpointing %s)", arch, batch, checkpointing)
            batch *= 2
        del method, optimizer
        torch.cuda.empty_cache()
    best, seconds, peak = largest.get(True, (0, 1.0, None))
    plain = largest.get(False, (0,))[0]
    capped = " (cap)" if best >= max_batch else ""
    return Row(
        case=f"memory: nvdinov2 {arch}/14 {s.n_global}x{s.global_size} + {s.n_local}x{s.local_size}",
        batch=f"{best}{capped}",
        ours=side(seconds, peak, best, None, 0.0) if best else Side(),
        target="batch >= 16 per GPU",
        note=f"largest power-of-2 batch with activation checkpointing; without: {plain}",
    )
