"""``foveal demo``: synthetic data -> train -> evaluate -> ONNX export, on CPU in minutes.

Until the MAE network lands this runs the simplest network there is, ``classification``
(a ViT-Tiny trained from scratch on the synthetic shapes). Every stage is an ordinary job, so
the results are in ``foveal jobs list`` like any other run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from foveal.jobs.runner import run_job
from foveal.jobs.workspace import Workspace

logger = logging.getLogger(__name__)

DEMO_DATA = {
    "num_train": 2400,
    "num_val": 400,
    "num_test": 400,
    "image_size": 64,
    "num_classes": 4,
    "seed": 0,
}
DEMO_EPOCHS = 12
DEMO_TRAIN = [
    "model.backbone.type=vit_tiny_patch16",
    "model.backbone.drop_path_rate=0.0",
    "dataset.augmentation.input_size=64",
    "dataset.augmentation.scale=[0.6, 1.0]",
    "dataset.augmentation.label_smoothing=0.0",
    "dataset.batch_size=64",
    "dataset.workers=1",
    "train.optim.lr=0.001",
    "train.optim.warmup_epochs=1",
    "train.precision=fp32",
    "train.checkpoint_interval=2",
]


def demo_dataset(workspace: Workspace) -> dict[str, Path]:
    """The synthetic dataset in the workspace, made once (deterministic, so reuse is safe)."""
    from foveal.data.synthetic import make_demo_dataset

    out = workspace.data_dir / "demo"
    manifest = out / "dataset.json"
    names = ("labeled_train.tar.gz", "labeled_val.tar.gz", "labeled_test.tar.gz")
    if manifest.is_file() and all((out / n).is_file() for n in names):
        recorded = json.loads(manifest.read_text())
        if all(recorded.get(k) == v for k, v in DEMO_DATA.items() if k in recorded):
            return {n.split(".")[0]: out / n for n in names}
    start = time.perf_counter()
    make_demo_dataset(out, overwrite=True, **DEMO_DATA)
    logger.info("synthetic dataset: %s (%.1f s)", out, time.perf_counter() - start)
    return {n.split(".")[0]: out / n for n in names}


def run_demo(workspace: Workspace, epochs: int | None = None) -> dict[str, Any]:
    """Run the demo's stages as jobs; returns the summary (stages with job ids, KPIs, artifacts)."""
    workspace.ensure()
    start = time.perf_counter()
    data = demo_dataset(workspace)
    train_overrides = DEMO_TRAIN + [
        f"train.num_epochs={epochs or DEMO_EPOCHS}",
        f"dataset.train_dataset.images_dir={data['labeled_train']}",
        f"dataset.val_dataset.images_dir={data['labeled_val']}",
    ]
    train = run_job("classification", "train", overrides=train_overrides, workspace=workspace)
    evaluate = run_job(
        "classification",
        "evaluate",
        # Held-out images the training never saw (evaluate reads dataset.val_dataset).
        overrides=[f"dataset.val_dataset.images_dir={data['labeled_test']}"],
        parent_id=train.id,
        workspace=workspace,
    )
    export = run_job("classification", "export", parent_id=train.id, workspace=workspace)
    stages = [("train", train), ("evaluate", evaluate), ("export", export)]
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
