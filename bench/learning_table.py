"""The learning table: nvdinov2 and MAE against their baselines over several seeds, mean +- std.

Runs ``nvdinov2_learning.py`` (kNN top-1 of raw pixels, the random-init ViT, the pretrained
teacher/student and the supervised ceiling of the same ViT; the online kNN curve and its last
value against the offline evaluate action) and ``mae_finetune_vs_scratch.py`` (fine-tune from MAE
pretraining vs from random init, same budget) once per seed, each in its own process, then prints
a Markdown table for bench/RESULTS.md.

    python bench/learning_table.py                             # 3 seeds, the recipes below (~40 min on 2 cores)
    python bench/learning_table.py --seeds 1 --tiny            # a smoke run (~1 min)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# The best nvdinov2 recipe measured on these data (bench/README.md), 60 epochs.
NVDINOV2 = ["--threads", "2", "--img-size", "32", "--epochs", "60", "--lr", "1e-3", "--layerscale", "0.1",
            "--teacher-temp", "0.07", "--teacher-temp-start", "0.04", "--hidden", "256", "--bottleneck", "64",
            "--prototypes", "512", "--sup-epochs", "60"]  # fmt: skip
MAE = ["--pretrain-epochs", "30", "--finetune-epochs", "8"]
TINY_NVDINOV2 = ["--num-train", "64", "--num-val", "32", "--img-size", "32", "--epochs", "2", "--depth", "1",
                 "--dim", "32", "--heads", "2", "--batch", "16", "--sup-epochs", "1", "--prototypes", "64",
                 "--hidden", "32", "--bottleneck", "16", "--n-local", "0"]  # fmt: skip
TINY_MAE = ["--num-train", "64", "--num-val", "32", "--pretrain-epochs", "2", "--finetune-epochs", "2",
            "--depth", "1", "--dim", "32", "--heads", "2", "--batch", "16"]  # fmt: skip


def _run(script: str, args: list[str], seed: int, out: Path) -> dict:
    figures = out / f"{Path(script).stem}-{seed}.json"
    cmd = [sys.executable, str(HERE / script), *args, "--seed", str(seed), "--json", str(figures)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(done.stdout)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-3000:])
        raise SystemExit(f"{script} --seed {seed} failed (exit {done.returncode})")
    return json.loads(figures.read_text())


def _stat(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.mean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="a smoke run at toy size (numbers mean nothing)")
    p.add_argument("--skip-mae", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="folder for the per-seed JSON files")
    args = p.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="learning_table_"))
    out.mkdir(parents=True, exist_ok=True)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    start = time.perf_counter()
    dino = [_run("nvdinov2_learning.py", TINY_NVDINOV2 if args.tiny else NVDINOV2, s, out) for s in seeds]
    mae = [] if args.skip_mae else [_run("mae_finetune_vs_scratch.py", TINY_MAE if args.tiny else MAE, s, out) for s in seeds]
    print(f"\n{len(list(seeds))} seed(s) in {time.perf_counter() - start:.0f} s; per-seed figures in {out}\n")
    print("| model / features | kNN or val top-1 (%), mean ± std over seeds |")
    print("|---|---|")
    for name in dino[0]["knn_top1"]:
        print(f"| nvdinov2 kNN: {name} | {_stat([d['knn_top1'][name] for d in dino])} |")
    if all("supervised" in d for d in dino):
        print(f"| (d) supervised ceiling, same ViT and budget: val top-1 | {_stat([d['supervised']['val_top1'] for d in dino])} |")
        print(f"| (d) supervised ceiling: kNN of its CLS | {_stat([d['supervised']['knn_top1'] for d in dino])} |")
    if all("offline_knn_top1" in d for d in dino):
        gaps = [abs(d["online_curve"][-1][1] - d["offline_knn_top1"]) for d in dino if d["online_curve"]]
        print(f"| online kNN, last epoch (teacher, val split) | {_stat([d['online_curve'][-1][1] for d in dino])} |")
        print(f"| offline evaluate, same checkpoint | {_stat([d['offline_knn_top1'] for d in dino])} |")
        print(f"| online - offline, largest gap (points) | {100 * max(gaps):.2f} |")
    for name in mae[0]["finetune_top1"] if mae else []:
        print(f"| MAE fine-tune {name}: val top-1 | {_stat([m['finetune_top1'][name] for m in mae])} |")
    if dino and dino[0].get("online_curve"):
        curve = dino[0]["online_curve"]
        print(f"\nonline kNN curve, seed {dino[0]['seed']}: " + " ".join(f"{e}:{100 * v:.1f}" for e, v in curve))


if __name__ == "__main__":
    main()
