"""What the online evaluation costs an nvdinov2 epoch, at the default settings.

Default settings: validation every epoch (``train.validation_interval=1``) on the labeled val split
``foveal data demo`` writes beside the training images (200 val for 1000 train images, its
defaults), evaluate's kNN protocol. The same nvdinov2 train job runs without and with
``dataset.val_dataset.images_dir``, interleaved (A B A B ...), and the script prints the median
epoch time of each (``status.json``'s ``time_per_epoch``, the first epoch left out as warm-up) and
the overhead: (with - without) / without. The one-off pass at initialisation (the kNN bar of the
``knn_regressed`` rule) is timed apart. The ViT is ``vit_t`` shrunk to CPU size as in
``nvdinov2_learning.py``.

    python bench/online_eval_overhead.py                     # ~5 min on 2 cores
    python bench/online_eval_overhead.py --rounds 1 --epochs 2 --num-train 128 --num-val 32   # smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from foveal.data.synthetic import make_demo_dataset  # noqa: E402
from foveal.engine.status import read_status  # noqa: E402
from foveal.jobs import Workspace  # noqa: E402
from foveal.jobs.lifecycle import run_job  # noqa: E402
from foveal.networks.nvdinov2 import backbones  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-train", type=int, default=1000)
    p.add_argument("--num-val", type=int, default=200)
    p.add_argument("--img-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    real = backbones.create_backbone
    shrink = {"depth": 4, "embed_dim": 96, "num_heads": 3, "init_values": 0.1}
    backbones.create_backbone = lambda name, **kw: real(name, **{**kw, **shrink})
    root = Path(tempfile.mkdtemp(prefix="online_eval_overhead_"))
    data = make_demo_dataset(root / "data", num_train=args.num_train, num_val=args.num_val, num_test=0,
                             image_size=args.img_size, num_classes=4, archives=False)  # fmt: skip
    common = [
        f"dataset.train_dataset.images_dir={data['images_train']}",
        "model.backbone.teacher_type=vit_t", "model.backbone.student_type=vit_t",
        "model.backbone.patch_size=8", f"model.backbone.img_size={args.img_size}",
        "model.head.hidden_dim=256", "model.head.bottleneck_dim=64", "train.num_prototypes=512",
        f"dataset.transform.global_crops_size={args.img_size}", "dataset.transform.local_crops_size=16",
        "dataset.transform.n_local_crops=4", f"dataset.batch_size={args.batch}", "dataset.workers=1",
        f"train.num_epochs={args.epochs}", "train.precision=fp32", "train.checkpoint_interval=1000",
        "train.schedulers.learning_rate.val_base=1e-3", "train.schedulers.learning_rate.warm_up_steps=10",
    ]  # fmt: skip
    online = [f"dataset.val_dataset.images_dir={data['labeled_val']}"]
    times: dict[str, list[float]] = {"without": [], "with": []}
    init_s: list[float] = []
    for _ in range(args.rounds):
        for name, extra in (("without", []), ("with", online)):
            job = run_job("nvdinov2", "train", overrides=[*common, *extra], workspace=Workspace(root / "ws"))
            lines = read_status(Path(job.results_dir) / "status.json")
            epochs = [x["time_per_epoch"] for x in lines if x.get("status") == "RUNNING" and x.get("time_per_epoch")]
            times[name] += epochs[1:]
            if extra:
                log = (Path(job.results_dir) / "logs" / "train.log").read_text()
                init_s.append(_init_seconds(log))
    without, with_ = statistics.median(times["without"]), statistics.median(times["with"])
    overhead = (with_ - without) / without
    print(f"nvdinov2 online evaluation overhead: {args.num_train} train / {args.num_val} labeled val images, "
          f"{args.img_size} px, batch {args.batch}, {args.epochs} epochs x {args.rounds} rounds")  # fmt: skip
    print(f"  median epoch without: {without:.2f} s ({len(times['without'])} epochs), with: {with_:.2f} s "
          f"({len(times['with'])} epochs) -> overhead {100 * overhead:+.1f}% of an epoch (target < 10%)")  # fmt: skip
    if init_s:
        print(f"  one-off pass at initialisation: {statistics.median(init_s):.2f} s")
    if args.json:
        args.json.write_text(json.dumps({"without_s": without, "with_s": with_, "overhead": overhead, "init_s": init_s}))


def _init_seconds(log: str) -> float:
    """Seconds between the trainer's start line and the 'online evaluation at initialisation' line."""
    import datetime as dt

    def at(marker: str) -> dt.datetime | None:
        for line in log.splitlines():
            if marker in line:
                return dt.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
        return None

    start, done = at("training on CPU") or at("training on"), at("online evaluation at initialisation")
    return (done - start).total_seconds() if start and done else float("nan")


if __name__ == "__main__":
    main()
