"""Child process of test_nvdinov2_ddp.py: a tiny nvdinov2 train job under two-process CPU DDP.

Run in its own interpreter (not forked from pytest, whose OpenMP pool a fork would inherit), so a
collective that never completes is a timeout the test reports, not a hung suite. Lightning's
``ddp_fork`` starts the two ranks (gloo) from here; the product selects DDP only for several GPUs,
so this script forces the CPU devices. Prints the job's status, KPIs and results folder as JSON.

    python nvdinov2_ddp_child.py OUT_DIR [KEY=VALUE ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from nvdinov2_tiny import TINY_VIT, TRAIN  # this folder is sys.path[0] for a script

from foveal.data.synthetic import make_demo_dataset
from foveal.engine import trainer as engine_trainer
from foveal.jobs import Workspace
from foveal.jobs.lifecycle import run_job
from foveal.networks.nvdinov2 import backbones


def main() -> None:
    out, extra = Path(sys.argv[1]), sys.argv[2:]
    real_backbone, real_trainer = backbones.create_backbone, engine_trainer.build_trainer
    backbones.create_backbone = lambda name, **kw: real_backbone(name, **{**kw, **TINY_VIT})
    engine_trainer.build_trainer = lambda **kw: real_trainer(
        **{**kw, "settings": None, "accelerator": "cpu", "devices": 2, "strategy": "ddp_fork"}
    )
    data = make_demo_dataset(
        out / "data", num_train=32, num_val=0, num_test=0, image_size=32, num_classes=2, archives=False
    )
    job = run_job(
        "nvdinov2",
        "train",
        overrides=[
            f"dataset.train_dataset.images_dir={data['images_train']}",
            *TRAIN,
            "dataset.batch_size=4",
            *extra,
        ],
        workspace=Workspace(out / "ws"),
    )
    print(json.dumps({"status": job.status.value, "kpis": job.kpis, "results": str(job.results_dir)}))


if __name__ == "__main__":
    main()
