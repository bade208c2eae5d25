"""Does MAE pretraining help? Fine-tune from our MAE pretraining vs from random init, same budget.

Everything runs as Foveal jobs on the synthetic shapes data (``foveal.data.make_demo_dataset``):

1. ``mae train`` stage pretrain on the training images (no labels);
2. ``mae train --parent <1> train.stage=finetune``: fine-tune from its encoder;
3. ``mae train train.stage=finetune``: the same fine-tuning run from random init.

Steps 2 and 3 share every setting (epochs, batch, optimiser, schedule, augmentation, seed); only
the starting weights differ. The script prints both validation top-1. The encoder is a small ViT
(the registered ``vit_tiny_patch16`` with ``--depth``/``--dim``/``--patch`` overrides) so the
comparison fits a laptop CPU.

    python bench/mae_finetune_vs_scratch.py                 # ~ a few minutes on 2 cores
    python bench/mae_finetune_vs_scratch.py --pretrain-epochs 60 --finetune-epochs 10
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from foveal.data.synthetic import make_demo_dataset  # noqa: E402
from foveal.jobs import Workspace  # noqa: E402
from foveal.jobs.lifecycle import run_job  # noqa: E402
from foveal.networks.mae import models  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-train", type=int, default=1200)
    p.add_argument("--num-val", type=int, default=400)
    p.add_argument("--num-classes", type=int, default=4)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--patch", type=int, default=4, help="ViT patch size (overrides the arch's 16)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--dim", type=int, default=96)
    p.add_argument("--heads", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--pretrain-epochs", type=int, default=30)
    p.add_argument("--finetune-epochs", type=int, default=8)
    p.add_argument("--pretrain-lr", type=float, default=1.5e-3)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--layer-decay", type=float, default=1.0, help="same for both runs (1.0 = off)")
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--workspace", type=Path, default=None, help="default: a temporary folder")
    p.add_argument("--seed", type=int, default=0, help="data and training seed (train.seed of every job)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    real = models.create_backbone
    shrink = {"depth": args.depth, "embed_dim": args.dim, "num_heads": args.heads, "patch_size": args.patch}
    models.create_backbone = lambda name, **kw: real(name, **{**kw, **shrink})

    root = args.workspace or Path(tempfile.mkdtemp(prefix="mae-bench-"))
    ws = Workspace(root / "ws")
    data = make_demo_dataset(
        root / "data",
        num_train=args.num_train,
        num_val=args.num_val,
        num_test=0,
        image_size=args.img_size,
        num_classes=args.num_classes,
        seed=args.seed,
        overwrite=True,
    )
    common = [
        "model.arch=vit_tiny_patch16",
        "model.drop_path_rate=0.0",
        "model.decoder_embed_dim=64",
        "model.decoder_depth=2",
        f"dataset.augmentation.input_size={args.img_size}",
        "dataset.augmentation.min_scale=0.5",
        f"dataset.batch_size={args.batch}",
        "dataset.num_workers_per_gpu=1",
        "train.optim.lr_scheduler=cosine",
        "train.optim.warmup_epochs=1",
        f"train.checkpoint_interval={10**6}",
        f"train.seed={args.seed}",
    ]
    start = time.perf_counter()
    pretrain = run_job(
        "mae",
        "train",
        overrides=[
            *common,
            f"train.num_epochs={args.pretrain_epochs}",
            f"train.optim.lr={args.pretrain_lr}",
            f"train.mask_ratio={args.mask_ratio}",
            f"dataset.train_data_sources={data['images_train']}",
        ],
        workspace=ws,
    )
    pretrain_s = time.perf_counter() - start
    finetune = [
        *common,
        "train.stage=finetune",
        f"train.num_epochs={args.finetune_epochs}",
        f"train.optim.lr={args.finetune_lr}",
        f"train.optim.layer_decay={args.layer_decay}",
        "dataset.augmentation.smoothing=0.1",
        # A short schedule: the heavy regularisers of MAE's 100-epoch recipe would dominate it.
        "dataset.augmentation.mixup=0",
        "dataset.augmentation.cutmix=0",
        "dataset.augmentation.auto_aug=null",
        f"dataset.train_data_sources={data['labeled_train']}",
        f"dataset.val_data_sources={data['labeled_val']}",
    ]
    results = {}
    for name, parent in (("from MAE pretraining", pretrain.id), ("from random init", None)):
        t = time.perf_counter()
        job = run_job("mae", "train", overrides=finetune, parent_id=parent, workspace=ws)
        results[name] = (job.kpis.get("val_top1", float("nan")), time.perf_counter() - t)
    print(
        f"ViT depth {args.depth} dim {args.dim} patch {args.patch} at {args.img_size}px; "
        f"{args.num_train} train / {args.num_val} val images, {args.num_classes} classes"
    )
    print(
        f"pretrain: {args.pretrain_epochs} epochs, mask {args.mask_ratio}, final train_loss "
        f"{pretrain.kpis.get('train_loss', float('nan')):.4f} ({pretrain_s:.0f} s)"
    )
    for name, (top1, seconds) in results.items():
        print(f"finetune {args.finetune_epochs} epochs {name:22s} val top-1 {top1:.4f} ({seconds:.0f} s)")
    print(f"workspace: {root}")
    if args.json is not None:
        import json

        args.json.write_text(json.dumps({
            "seed": args.seed, "pretrain_s": pretrain_s,
            "finetune_top1": {name: top1 for name, (top1, _) in results.items()},
        }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
