"""Does NVDINOv2 pretraining help classification? Fine-tune vs random init vs linear probe, 64 px.

Issue 7's learning bar. Everything runs as Foveal jobs on the synthetic shapes data
(``foveal.data.make_demo_dataset``; class = shape, everything else random):

1. ``nvdinov2 train`` on the *unlabeled* training images with the recipe of
   ``bench/nvdinov2_learning.py`` (imported, not copied), or ``--student PATH`` to reuse a
   ``student_epoch_*.pth`` that benchmark (or this one) already produced;
2. ``classification train`` from that student (``model.backbone.pretrained_backbone_path``);
3. the same run from random init: every setting shared (epochs, batch, lr schedule,
   augmentation, seed), only the starting weights differ;
4. a linear probe: ``model.backbone.freeze=true`` from the student, same epochs and batch.

It prints the val top-1 of the three runs and their times. Target: (2) beats (3) by a clear margin.

Patch size and "64 px": the NVDINOv2 ViTs (``vit_t`` ...) are patch 14 and 64 is no multiple of
14. Rather than move to a 56 or 70 px input, both networks use ``vit_t`` with patch 16 at 64 px
(a 4 x 4 grid), exactly as ``bench/nvdinov2_learning.py`` pretrains it. classification has no
patch-size key, so this script registers the shrunk ViT once, as ``vit_t_d<depth>_w<dim>_patch16``
(``vit_t``'s own builder: LayerScale 1e-5, no registers, eps 1e-6, patch 16), and names it in
``model.backbone.type``; the student's every tensor then loads as is (the classification log
line naming "foveal nvdinov2 student backbone" says so, and the script checks it).

    python bench/classification_learning.py                 # ~ a few minutes on 2 quiet cores
    python bench/classification_learning.py --student /path/to/student_epoch_020_step_00360.pth
    python bench/classification_learning.py --pretrain-epochs 40 --epochs 15
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent / "src"))
sys.path.insert(0, str(BENCH))

import nvdinov2_learning  # noqa: E402

from foveal.data.synthetic import make_demo_dataset  # noqa: E402
from foveal.jobs import Workspace  # noqa: E402
from foveal.jobs.lifecycle import run_job  # noqa: E402
from foveal.networks.nvdinov2 import backbones as nvdinov2_backbones  # noqa: E402
from foveal.nn.registry import create_backbone, list_backbones, register_backbone  # noqa: E402

PATCH = 16  # see the module docstring: 64 px = 4 x 4 patches of 16


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", type=Path, default=None, help="reuse this student_epoch_*.pth (skip step 1)")
    p.add_argument("--num-train", type=int, default=1200)
    p.add_argument("--num-val", type=int, default=400)
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--img-size", type=int, default=64)
    p.add_argument("--depth", type=int, default=4, help="ViT depth (must match --student's)")
    p.add_argument("--dim", type=int, default=96, help="ViT width (must match --student's)")
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument(
        "--pretrain-epochs", type=int, default=20, help="nvdinov2 epochs (its benchmark's default)"
    )
    p.add_argument("--epochs", type=int, default=10, help="classification epochs, all three runs")
    p.add_argument("--lr", type=float, default=5e-4, help="peak lr of fine-tuning and of random init")
    p.add_argument("--probe-lr", type=float, default=5e-3, help="peak lr of the linear probe (head only)")
    p.add_argument("--warmup-epochs", type=int, default=1)
    p.add_argument("--min-scale", type=float, default=0.35, help="random resized crop: smallest area kept")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--out", type=Path, default=None, help="folder for data and jobs (default: a temp dir)")
    return p.parse_args()


def register_bench_vit(args: argparse.Namespace) -> str:
    """Register the shrunk patch-16 ``vit_t`` under a self-describing name; return the name.

    nvdinov2 builds its student through ``nvdinov2.backbones.create_backbone`` with
    ``patch_size`` from its spec; patching that one name with the same depth/width keeps the two
    networks on one architecture (the way ``bench/nvdinov2_learning.py`` shrinks it).
    """
    shrink = {"depth": args.depth, "embed_dim": args.dim, "num_heads": args.heads}
    real = nvdinov2_backbones.create_backbone
    nvdinov2_backbones.create_backbone = lambda name, **kw: real(name, **{**kw, **shrink})
    name = f"vit_t_d{args.depth}_w{args.dim}_patch{PATCH}"
    if name not in list_backbones():
        register_backbone(name)(
            lambda **kw: create_backbone("vit_t", **{**kw, **shrink, "patch_size": PATCH})
        )
    return name


def pretrain_recipe(args: argparse.Namespace, images_dir: Path) -> list[str]:
    """``bench/nvdinov2_learning.py``'s overrides with its defaults, sized by this script's flags."""
    saved, sys.argv = sys.argv, sys.argv[:1]  # its parse_args reads sys.argv: take its defaults
    try:
        nv_args = nvdinov2_learning.parse_args()
    finally:
        sys.argv = saved
    for key in ("num_train", "img_size", "batch", "workers", "seed"):
        setattr(nv_args, key, getattr(args, key))
    nv_args.epochs = args.pretrain_epochs
    recipe = nvdinov2_learning.recipe(nv_args, images_dir)
    if f"model.backbone.patch_size={PATCH}" not in recipe:
        raise SystemExit(f"bench/nvdinov2_learning.py no longer pretrains with patch {PATCH}; update PATCH")
    return recipe


def classification_overrides(args: argparse.Namespace, backbone: str, data: dict[str, Path]) -> list[str]:
    """Settings shared by all three classification runs."""
    return [
        f"model.backbone.type={backbone}",
        "model.backbone.drop_path_rate=0.0",
        f"dataset.train_dataset.images_dir={data['labeled_train']}",
        f"dataset.val_dataset.images_dir={data['labeled_val']}",
        f"dataset.augmentation.input_size={args.img_size}",
        f"dataset.augmentation.scale=[{args.min_scale}, 1.0]",
        f"dataset.batch_size={args.batch}",
        f"dataset.workers={args.workers}",
        f"train.num_epochs={args.epochs}",
        f"train.seed={args.seed}",
        "train.precision=fp32",
        "train.optim.scheduler=cosine",
        f"train.optim.warmup_epochs={args.warmup_epochs}",
        f"train.checkpoint_interval={args.epochs}",
    ]


class LoadLog(logging.Handler):
    """Keeps the classification log lines that name what a pretrained file loaded as."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "pretrained_backbone_path" in message or "not loaded" in message or "kept their init" in message:
            self.lines.append(message)


def run_classification(ws: Workspace, overrides: list[str], log: LoadLog) -> tuple[Any, float, list[str]]:
    """(job, seconds, load log lines) of one classification train job."""
    log.lines.clear()
    start = time.perf_counter()
    job = run_job("classification", "train", overrides=overrides, workspace=ws)
    return job, time.perf_counter() - start, list(log.lines)


def check_student_loaded(lines: list[str], student: Path) -> None:
    """The student must load whole, as an nvdinov2 student: anything less would bias the bar."""
    loaded = [line for line in lines if "loaded" in line and "nvdinov2 student backbone" in line]
    partial = [line for line in lines if "not loaded" in line or "kept their init" in line]
    if not loaded or partial:
        raise SystemExit(f"the student {student} did not load whole into the classifier: {lines or 'no log'}")


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    log = LoadLog()
    pretrained_logger = logging.getLogger("foveal.engine.pretrained")
    pretrained_logger.setLevel(logging.INFO)
    pretrained_logger.addHandler(log)
    logging.getLogger("foveal.nn.checkpoint_filter").addHandler(log)
    backbone = register_bench_vit(args)

    root = args.out or Path(tempfile.mkdtemp(prefix="classification_learning_"))
    ws = Workspace(root / "ws")
    data = make_demo_dataset(
        root / "data",
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=0,
        image_size=args.img_size,
        num_classes=args.num_classes,
        seed=args.seed,
        archives=False,
        overwrite=True,
    )
    pretrain_s = 0.0
    student = args.student
    if student is None:
        start = time.perf_counter()
        job = run_job(
            "nvdinov2", "train", overrides=pretrain_recipe(args, data["images_train"]), workspace=ws
        )
        pretrain_s = time.perf_counter() - start
        student = sorted(Path(job.results_dir).glob("student_epoch_*.pth"))[-1]
        print(
            f"(1) nvdinov2 pretrain: {args.pretrain_epochs} epochs, final train_loss "
            f"{job.kpis.get('train_loss', float('nan')):.3f} ({pretrain_s:.0f} s) -> {student.name}"
        )

    common = classification_overrides(args, backbone, data)
    from_student = f"model.backbone.pretrained_backbone_path={student}"
    runs = {
        "(2) fine-tune from nvdinov2": [*common, from_student, f"train.optim.lr={args.lr}"],
        "(3) fine-tune from random init": [*common, f"train.optim.lr={args.lr}"],
        "(4) linear probe on nvdinov2": [
            *common,
            from_student,
            "model.backbone.freeze=true",
            f"train.optim.lr={args.probe_lr}",
        ],
    }
    results = {}
    for name, overrides in runs.items():
        job, seconds, lines = run_classification(ws, overrides, log)
        if from_student in overrides:
            check_student_loaded(lines, student)
            print(f"    {lines[-1]}")
        results[name] = (job.kpis.get("val_top1", float("nan")), seconds)
        print(f"{name:32s} val top-1 {results[name][0]:.4f} ({seconds:.0f} s)")

    print(
        f"classification learning: {backbone} at {args.img_size} px, {args.num_train} train / "
        f"{args.num_val} val images, {args.num_classes} classes; {args.epochs} epochs, batch {args.batch}, "
        f"lr {args.lr} (probe {args.probe_lr}), cosine, {args.warmup_epochs} warm-up, seed {args.seed}"
    )
    margin = results["(2) fine-tune from nvdinov2"][0] - results["(3) fine-tune from random init"][0]
    print(f"  margin of (2) over (3): {100 * margin:+.1f} points")
    print(f"  workspace: {root}")


if __name__ == "__main__":
    main()
