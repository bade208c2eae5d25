"""Data-pipeline and inference cases of the benchmark suite.

Data: decode + DINOv2 multi-crop augmentation (``MultiCropAugmentation``, ``MultiCropCollate``)
of real JPEG files written by the synthetic generator, through a ``DataLoader`` with N worker
processes; measured alone (images/s) and feeding the nvdinov2 training step (the fraction of
wall time the step loop waits for data; target < 5 %).
ONNX: the exported backbones (nvdinov2 ``BackboneTokens``, MAE ``EncoderFeatures``) in ONNX
Runtime vs eager PyTorch on the same input, fp32 on CPU.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import nvdinov2_step as nv
import torch
from suite_cases import PATCH, DinoSizes, _nv_args, build_dino
from suite_common import Row, Side, interleaved, mae_vs_hf, side, sync
from torch.utils.data import DataLoader

from foveal.data.folders import ImageFolderDataset
from foveal.data.synthetic import make_demo_dataset
from foveal.networks.nvdinov2.config import MaskingConfig, TransformConfig
from foveal.networks.nvdinov2.multicrop import MultiCropAugmentation, MultiCropCollate, device_colour


def _loader(root: Path, s: DinoSizes, workers: int, device: torch.device, on_device: bool = False) -> DataLoader:
    transform = TransformConfig(
        n_global_crops=s.n_global,
        global_crops_size=s.global_size,
        n_local_crops=s.n_local,
        local_crops_size=s.local_size,
        gpu_augmentation=on_device,
    )
    dataset = ImageFolderDataset(root, transform=MultiCropAugmentation(transform), verify=False)
    grid = s.global_size // PATCH
    return DataLoader(
        dataset,
        batch_size=s.batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        collate_fn=MultiCropCollate((grid, grid), MaskingConfig()),
    )


def _loader_rate(loader: DataLoader, n_global: int) -> float:
    """Images/s of one epoch, the first batch (worker start-up) excluded."""
    it = iter(loader)
    next(it)
    start, images = time.perf_counter(), 0
    for batch in it:
        images += len(batch["global_crops"]) // n_global  # crop-major: G B rows
    return images / (time.perf_counter() - start)


def _fed_step(loader: DataLoader, arch: str, s: DinoSizes, device: torch.device, bf16: bool) -> tuple:
    """Train the nvdinov2 step from the loader for one epoch: (step seconds, wait fraction)."""
    method, optimizer = build_dino("ours", arch, s, device)
    args = _nv_args(s, s.batch, bf16)
    it = iter(loader)
    warm = device_colour({k: v.to(device) for k, v in next(it).items()})
    nv.step(method, optimizer, warm, args)  # start-up: first batch and first step are not timed
    sync(device)
    waited, steps, start = 0.0, 0, time.perf_counter()
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        waited += time.perf_counter() - t0
        nv.step(method, optimizer, device_colour(batch), args)  # gpu_augmentation: colour work in the step
        sync(device)  # a step's data wait is only meaningful once the previous step has finished
        steps += 1
    total = time.perf_counter() - start
    return (total - waited) / max(steps, 1), waited / total if steps else float("nan")


def data_case(
    arch: str, s: DinoSizes, device: torch.device, bf16: bool, *, images: int, image_size: int, workers: int
) -> list[Row]:
    """Loader images/s with ``workers`` processes on synthetic JPEGs, and its wait in the training
    loop; with the colour augmentation in the workers, then on the device
    (``dataset.transform.gpu_augmentation``, its device time counted in the step)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="foveal-bench-") as tmp:
        written = make_demo_dataset(
            tmp, num_train=images, num_val=0, num_test=0, image_size=image_size,
            image_format="jpg", archives=False, num_workers=workers or 1,
        )  # fmt: skip
        for on_device in (False, True):
            loader = _loader(written["images_train"], s, workers, device, on_device)
            rate = _loader_rate(loader, s.n_global)
            step_s, wait = _fed_step(loader, arch, s, device, bf16)
            del loader
            where = "colour on the device" if on_device else "colour in the workers"
            rows.append(Row(
                case=f"data ({where}): jpeg {image_size}px decode + multicrop, {workers} workers",
                batch=str(s.batch),
                ours=Side(images_per_s=rate),
                target="data wait < 5 % of step",
                note=f"fed to the {arch}/14 step ({s.batch / step_s:.1f} img/s): data wait {100 * wait:.1f} %",
            ))  # fmt: skip
    return rows


def _ort_session(model: torch.nn.Module, example: torch.Tensor, folder: Path, name: str):
    import onnxruntime as ort

    from foveal.export import export_onnx

    onnx_file = folder / f"{name}.onnx"
    export_onnx(model, example, onnx_file, dynamic_batch=False, verify=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # The same thread count as torch, and no busy-waiting after a run: ORT's spinning pool would
    # otherwise keep the cores busy while the interleaved eager PyTorch forward runs.
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])


def onnx_cases(dino_arch: str, mae_arch: str, img_size: int, batch: int, timing) -> list[Row]:
    """ONNX Runtime vs eager PyTorch (fp32, no grad) for the two exported backbone views."""
    from foveal.networks.mae.models import EncoderFeatures
    from foveal.networks.nvdinov2.export import BackboneTokens
    from foveal.nn.registry import create_backbone

    dim, depth, heads = nv.SIZES[dino_arch]
    mae_dim, mae_depth, mae_heads, mae_patch = mae_vs_hf.ARCHS[mae_arch]
    dino_size = img_size // PATCH * PATCH
    mae_size = img_size // mae_patch * mae_patch
    models = {
        f"nvdinov2 {dino_arch}/14 backbone {dino_size}px": (
            BackboneTokens(create_backbone("vit_s", img_size=dino_size, embed_dim=dim, depth=depth, num_heads=heads)),
            dino_size,
        ),
        f"mae {mae_arch} encoder {mae_size}px": (
            EncoderFeatures(
                create_backbone(
                    "vit_base_patch16", img_size=mae_size, patch_size=mae_patch, embed_dim=mae_dim,
                    depth=mae_depth, num_heads=mae_heads, pos_embed_type="sincos",
                )
            ),
            mae_size,
        ),
    }  # fmt: skip
    rows = []
    cpu = torch.device("cpu")
    # Eager PyTorch needs a few calls before oneDNN has built its kernels (the first calls of a toy
    # ViT take ~200x the steady time), and an inference call is cheap: time more of them.
    timing = type(timing)(max(5, timing.warmup), max(5, timing.per_round), max(3, timing.rounds))
    with tempfile.TemporaryDirectory(prefix="foveal-bench-onnx-") as tmp:
        for i, (name, (model, size)) in enumerate(models.items()):
            model.eval()
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            session = _ort_session(model, x, Path(tmp), f"model{i}")
            feed = {session.get_inputs()[0].name: x.numpy()}

            def eager(model=model, x=x) -> None:
                with torch.no_grad():
                    model(x)

            measured = interleaved(
                {"ort": lambda s=session, f=feed: s.run(None, f), "eager": eager}, cpu, **vars(timing)
            )
            rows.append(
                Row(
                    case=f"onnx: {name}",
                    batch=str(batch),
                    ours=side(*measured["ort"], batch, None, 0.0),
                    peer=side(*measured["eager"], batch, None, 0.0),
                    peer_name="eager PyTorch fp32",
                    target="ratio >= 1.3x",
                    note="ours = ONNX Runtime (CPU EP, all graph optimisations)",
                )
            )
    return rows
