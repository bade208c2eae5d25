"""Concurrent trials on a CPU: step time with each process's threads capped to cores/K vs not.

Two (``--jobs``) processes start at once, each timing ``--steps`` eager training steps of a small
MAE ViT (forward, loss, backward, AdamW) after a warm-up: first without any cap (each process
starts torch's default pool, one thread per core, so K processes oversubscribe the cores), then
with ``OMP_NUM_THREADS`` = cores / K, what :class:`foveal.platforms.local.LocalPool` sets for
concurrent jobs. Printed: the median step time of each setting (over the processes) and the
ratio uncapped / capped.

    python bench/thread_cap.py                  # ~1 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time, torch
sys.path.insert(0, sys.argv[3])
from types import SimpleNamespace
from foveal.networks.mae.models import build_pretrain_model
steps, warm = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
cfg = SimpleNamespace(arch="vit_tiny_patch16", drop_path_rate=0.0, decoder_embed_dim=128, decoder_depth=2)
model = build_pretrain_model(cfg, img_size=64, mask_ratio=0.75, norm_pix_loss=True, patch_size=8, depth=4)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
x = torch.randn(32, 3, 64, 64)
times = []
for i in range(warm + steps):
    t = time.perf_counter()
    loss, _ = model(x)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    if i >= warm:
        times.append(time.perf_counter() - t)
print(json.dumps({"threads": torch.get_num_threads(), "median_s": sorted(times)[len(times) // 2]}))
"""


def run(jobs: int, steps: int, warm: int, threads: int | None) -> list[dict]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(steps), str(warm), src], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(jobs)
    ]
    return [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    capped_threads = max(1, cores // args.jobs)
    results: dict[str, list[float]] = {"uncapped": [], "capped": []}
    threads_seen: dict[str, set[int]] = {"uncapped": set(), "capped": set()}
    for _ in range(args.rounds):
        for name, threads in (("uncapped", None), ("capped", capped_threads)):
            for r in run(args.jobs, args.steps, args.warmup, threads):
                results[name].append(r["median_s"])
                threads_seen[name].add(r["threads"])
    uncapped, capped = statistics.median(results["uncapped"]), statistics.median(results["capped"])
    print(f"{args.jobs} concurrent trials on {cores} cores, MAE ViT (dim 192, depth 4) at 64 px, batch 32:")
    print(f"  uncapped ({sorted(threads_seen['uncapped'])} threads each): median step {1000 * uncapped:.0f} ms")
    print(f"  capped to cores/{args.jobs} ({sorted(threads_seen['capped'])} threads each): median step {1000 * capped:.0f} ms")
    print(f"  uncapped / capped: {uncapped / capped:.2f}x")


if __name__ == "__main__":
    main()
