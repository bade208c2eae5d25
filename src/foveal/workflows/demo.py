"""``foveal demo``: synthetic data -> MAE pretrain -> finetune -> evaluate -> ONNX export, on CPU.

Masked-autoencoder pretraining (He et al., 2021) on the unlabeled synthetic shapes, fine-tuning
of its encoder on the labeled copy, evaluation on held-out images and an ONNX export checked
against PyTorch. Every stage is an ordinary job whose parent is the previous stage, so the
results are in ``foveal jobs list`` like any other run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from foveal.jobs.lifecycle import run_job
from foveal.jobs.workspace import Workspace

logger = logging.getLogger(__name__)

DEMO_DATA = {
    "num_train": 4800,
    "num_val": 400,
    "num_test": 400,
    "image_size": 32,
    "num_classes": 4,
    "seed": 0,
}
# Measured in a fresh venv on 2 cores (2026-12-03, quiet): 2 min 16 s wall, test top-1 0.45. An
# earlier 10 + 6 epoch cut measured 4 min 56 s (0.5175) on a loaded machine: too close to the budget.
DEMO_PRETRAIN_EPOCHS = 8
DEMO_FINETUNE_EPOCHS = 5
# The encoder is the CPU-sized vit_micro_patch4 (128 wide, 4 blocks, 4-px patches: 64 tokens at
# 32 px, 16 of them visible to the encoder at mask 0.75) with a 2-block, 64-wide decoder: a
# paper-sized ViT would not see enough steps in a few CPU minutes to learn anything.
DEMO_COMMON = [
    "model.arch=vit_micro_patch4",
    "model.drop_path_rate=0.0",
    "model.decoder_embed_dim=64",
    "model.decoder_depth=2",
    "dataset.augmentation.input_size=32",
    "dataset.augmentation.min_scale=0.5",
    "dataset.augmentation.max_scale=1.0",  # TAO's default 2.0 falls back to whole-image crops
    "dataset.batch_size=64",
    "dataset.num_workers_per_gpu=1",
    "train.optim.lr_scheduler=cosine",
    "train.optim.warmup_epochs=1",
    "train.precision=fp32",
    "train.checkpoint_interval=2",
]
DEMO_PRETRAIN = ["train.stage=pretrain", "train.optim.lr=0.0015", "train.mask_ratio=0.75"]
DEMO_FINETUNE = [
    "train.stage=finetune",
    "train.optim.lr=0.001",
    "train.optim.backbone_multiplier=1.0",  # the whole encoder at the base LR (TAO's default: 0.1)
    "dataset.augmentation.smoothing=0.1",
    # A short schedule: the heavy regularisers of MAE's 100-epoch recipe would dominate it.
    "dataset.augmentation.mixup=0",
    "dataset.augmentation.cutmix=0",
    "dataset.augmentation.auto_aug=null",
]


def demo_dataset(workspace: Workspace) -> dict[str, Path]:
    """The synthetic dataset in the workspace, made once (deterministic, so reuse is safe)."""
    from foveal.data.synthetic import make_demo_dataset

    out = workspace.data_dir / "demo"
    manifest = out / "dataset.json"
    names = ("images_train.tar.gz", "labeled_train.tar.gz", "labeled_val.tar.gz", "labeled_test.tar.gz")
    if manifest.is_file() and all((out / n).is_file() for n in names):
        recorded = json.loads(manifest.read_text())
        if all(recorded.get(k) == v for k, v in DEMO_DATA.items() if k in recorded):
            return {n.split(".")[0]: out / n for n in names}
    start = time.perf_counter()
    make_demo_dataset(out, overwrite=True, **DEMO_DATA)  # type: ignore[arg-type]  # all ints, by name
    logger.info("synthetic dataset: %s (%.1f s)", out, time.perf_counter() - start)
    return {n.split(".")[0]: out / n for n in names}


def run_demo(
    workspace: Workspace, epochs: int | None = None, finetune_epochs: int | None = None
) -> dict[str, Any]:
    """MAE pretrain -> finetune -> evaluate -> export as jobs; returns the summary.

    Args:
        workspace: where the jobs, results and the synthetic dataset go.
        epochs: pretraining epochs (default ``DEMO_PRETRAIN_EPOCHS``).
        finetune_epochs: fine-tuning epochs (default ``DEMO_FINETUNE_EPOCHS``).
    """
    workspace.ensure()
    start = time.perf_counter()
    data = demo_dataset(workspace)
    pretrain = run_job(
        "mae",
        "train",
        overrides=DEMO_COMMON
        + DEMO_PRETRAIN
        + [
            f"train.num_epochs={epochs or DEMO_PRETRAIN_EPOCHS}",
            # Self-supervised: the unlabeled images (the same pictures as labeled_train).
            f"dataset.train_data_sources={data['images_train']}",
        ],
        workspace=workspace,
    )
    finetune = run_job(
        "mae",
        "train",
        overrides=DEMO_COMMON
        + DEMO_FINETUNE
        + [
            f"train.num_epochs={finetune_epochs or DEMO_FINETUNE_EPOCHS}",
            f"dataset.train_data_sources={data['labeled_train']}",
            f"dataset.val_data_sources={data['labeled_val']}",
        ],
        parent_id=pretrain.id,  # starts from the pretrained encoder (mae's handoff rule)
        workspace=workspace,
    )
    evaluate = run_job(
        "mae",
        "evaluate",
        # Held-out images neither training stage saw.
        overrides=[f"dataset.val_data_sources={data['labeled_test']}"],
        parent_id=finetune.id,
        workspace=workspace,
    )
    export = run_job("mae", "export", parent_id=finetune.id, workspace=workspace)
    stages = [("pretrain", pretrain), ("finetune", finetune), ("evaluate", evaluate), ("export", export)]
    seconds = time.perf_counter() - start
    return {
        "workspace": str(workspace.root),
        "seconds": round(seconds, 1),
        "stages": [
            {
                "stage": name,
                "job_id": job.id,
                "status": job.status.value,
                "kpis": job.kpis,
                "artifacts": job.artifacts,
            }
            for name, job in stages
        ],
        "message": (
            f"demo finished in {seconds:.0f} s: test top-1 {evaluate.kpis.get('top1', float('nan')):.3f}, "
            f"ONNX Runtime vs PyTorch max |diff| {export.kpis.get('onnx_max_abs_diff', float('nan')):.1e}. "
            "See `foveal jobs list`."
        ),
    }


# ------------------------------------------------------------------------- foveal demo --task

# task -> the example model (foveal.port.examples), its train epochs and learning rate. Measured on
# 2 cores (2026-12-03), whole demo including the port: detection 60 epochs ~50 s (150 epochs: 119 s,
# test mAP50 0.039: DETR learns slowly), segmentation 60 ~40 s (100: 64 s, mIoU 0.29), depth 15:
# 43 s (AbsRel 0.076), zero-shot 10: 9 s (top-1 0.41 on 3 classes), grounding 15: 34 s.
TASK_DEMOS: dict[str, dict[str, Any]] = {
    "detection": {"model": "detr", "epochs": 60, "lr": 1e-3},
    "segmentation": {"model": "segformer", "epochs": 60, "lr": 3e-3},
    "depth": {"model": "dpt", "epochs": 15, "lr": 1e-3},
    "zero-shot": {"model": "clip", "epochs": 10, "lr": 1e-3},
    "grounding": {"model": "grounding_dino", "epochs": 15, "lr": 1e-3},
    "instance": {"model": "mask2former", "epochs": 15, "lr": 1e-3},
}
TASK_DEMO_DATA = {"num_train": 256, "num_val": 64, "num_test": 32, "image_size": 64, "num_classes": 3, "seed": 0}
_KPI = {"detection": "mAP50", "segmentation": "mIoU", "depth": "abs_rel", "zero-shot": "top1", "grounding": "mAP50",
        "instance": "mAP"}


def _task_demo_data(workspace: Workspace, task: str) -> Path:
    """The annotated shapes (or, for zero-shot, class folders) in the workspace, made once."""
    from foveal.data.synthetic import make_demo_dataset
    from foveal.data.synthetic_tasks import make_task_dataset

    if task == "zero-shot":
        root = workspace.data_dir / "demo_zero_shot"
        if not (root / "dataset.json").is_file():
            make_demo_dataset(root, num_train=256, num_val=64, num_test=32, image_size=32, num_classes=3,
                              archives=False, num_workers=1, overwrite=True)  # fmt: skip
        return root
    root = workspace.data_dir / "demo_tasks"
    if not (root / "dataset.json").is_file():
        make_task_dataset(root, overwrite=True, **TASK_DEMO_DATA)
    return root


def _task_demo_model(workspace: Workspace, task: str) -> Path:
    from foveal.port import examples

    name = TASK_DEMOS[task]["model"]
    folder = workspace.data_dir / "demo_models" / name
    if not (folder / "config.json").is_file():
        if name == "clip":
            examples.save_clip(folder)
        elif name == "grounding_dino":
            examples.save_grounding_dino(folder)
        else:
            examples.save_task_model(name, folder)
    return folder


def _task_demo_overrides(task: str, root: Path) -> tuple[list[str], list[str], list[str]]:
    """(train, evaluate, inference) overrides for the demo data of ``task``."""
    if task == "zero-shot":
        return ([f"dataset.train_dataset.images_dir={root / 'labeled_train'}",
                 f"dataset.val_dataset.images_dir={root / 'labeled_val'}"],
                [f"dataset.val_dataset.images_dir={root / 'labeled_test'}"],
                [f"dataset.test_dataset.images_dir={root / 'labeled_test'}"])  # fmt: skip
    if task in ("detection", "grounding", "instance"):
        return ([f"dataset.train_data_sources=[{{image_dir: {root / 'coco_train' / 'images'}, "
                 f"json_file: {root / 'coco_train' / 'annotations.json'}}}]",
                 f"dataset.val_data_sources.image_dir={root / 'coco_val' / 'images'}",
                 f"dataset.val_data_sources.json_file={root / 'coco_val' / 'annotations.json'}"],
                [f"dataset.test_data_sources.image_dir={root / 'coco_test' / 'images'}",
                 f"dataset.test_data_sources.json_file={root / 'coco_test' / 'annotations.json'}"],
                [f"dataset.infer_data_sources.image_dir={root / 'coco_test' / 'images'}"])  # fmt: skip
    key = "dataset.segment" if task == "segmentation" else "dataset.depth"
    common = [f"{key}.root_dir={root}"]
    return common, [*common, f"{key}.test_split=test"], [*common, f"{key}.predict_split=test"]


def run_task_demo(workspace: Workspace, task: str, epochs: int | None = None) -> dict[str, Any]:
    """Port a small random Hugging Face model of ``task`` (built locally), then train -> evaluate ->
    inference -> export it on the annotated synthetic shapes, each an ordinary job.

    Raises:
        UsageError: an unknown task.
    """
    from foveal.errors import UsageError
    from foveal.port.pipeline import port_hf

    if task not in TASK_DEMOS:
        raise UsageError(f"--task {task!r}: expected one of {', '.join(['classification', *TASK_DEMOS])}")
    workspace.ensure()
    start = time.perf_counter()
    root = _task_demo_data(workspace, task)
    settings = TASK_DEMOS[task]
    name = f"demo_{settings['model']}"
    report = port_hf(str(_task_demo_model(workspace, task)), name, workspace=workspace)
    train_data, eval_data, infer_data = _task_demo_overrides(task, root)
    common = ["dataset.workers=1", "dataset.batch_size=16", "dataset.img_size=64" if task != "zero-shot" else
              "dataset.img_size=32"]  # fmt: skip
    train = run_job(name, "train", workspace=workspace, new=True, overrides=[
        *common, *train_data, f"train.num_epochs={epochs or settings['epochs']}", f"train.optim.lr={settings['lr']}",
        f"train.optim.lr_backbone={settings['lr']}", "train.optim.lr_scheduler=Cosine", "train.precision=fp32",
        "train.checkpoint_interval=5"])  # fmt: skip
    evaluate = run_job(name, "evaluate", parent_id=train.id, workspace=workspace, overrides=[*common, *eval_data])
    infer = run_job(name, "inference", parent_id=train.id, workspace=workspace,
                    overrides=[*common, *infer_data, "inference.conf_threshold=0.3"])  # fmt: skip
    export = run_job(name, "export", parent_id=train.id, workspace=workspace)
    stages = [("train", train), ("evaluate", evaluate), ("inference", infer), ("export", export)]
    seconds = time.perf_counter() - start
    kpi = _KPI[task]
    return {
        "workspace": str(workspace.root),
        "task": task,
        "network": name,
        "port": report.status,
        "seconds": round(seconds, 1),
        "stages": [{"stage": s, "job_id": j.id, "status": j.status.value, "kpis": j.kpis, "artifacts": j.artifacts}
                   for s, j in stages],  # fmt: skip
        "message": (
            f"{task} demo finished in {seconds:.0f} s: ported {report.source} as {name}; test {kpi} "
            f"{evaluate.kpis.get(kpi, float('nan')):.3f}, ONNX Runtime vs PyTorch max |diff| "
            f"{export.kpis.get('onnx_max_abs_diff', float('nan')):.1e}. See `foveal jobs list`."
        ),
    }
