"""nvdinov2 losses, teacher centering, block masking and schedules against hand-computed values."""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import pytest
import torch

from foveal.engine.schedules import warmup_cosine
from foveal.networks.nvdinov2.losses import TeacherCentering, dino_loss, ibot_loss, koleo_loss, sinkhorn_knopp
from foveal.networks.nvdinov2.masking import BlockMaskGenerator, sample_masks
from foveal.networks.nvdinov2.schedules import schedule_value, steps_beyond_run


def _ce(target: list[float], logits: list[float], temp: float) -> float:
    z = [v / temp for v in logits]
    log_norm = math.log(sum(math.exp(v) for v in z))
    return -sum(t * (v - log_norm) for t, v in zip(target, z, strict=True))


def test_dino_loss_matches_hand_computation_and_skips_same_crop_pairs():
    temp = 0.5
    s = [[1.0, 0.0], [0.0, 2.0], [0.5, 0.5]]  # global 0, global 1, local 0 (B = 1)
    t = [[0.9, 0.1], [0.2, 0.8]]  # teacher targets of global 0 and 1
    student = [torch.tensor([row]) for row in s]
    teacher = [torch.tensor([row]) for row in t]
    pairs = [(0, 1), (1, 0), (2, 0), (2, 1)]  # never (0, 0) or (1, 1)
    expected = sum(_ce(t[j], s[i], temp) for i, j in pairs) / len(pairs)
    assert dino_loss(student, teacher, temp).item() == pytest.approx(expected, rel=1e-6)


def test_dino_loss_averages_over_the_batch():
    student = [torch.randn(4, 8) for _ in range(2)]
    teacher = [torch.softmax(torch.randn(4, 8), -1) for _ in range(2)]
    per_image = [
        dino_loss([s[i : i + 1] for s in student], [t[i : i + 1] for t in teacher]) for i in range(4)
    ]
    assert dino_loss(student, teacher).item() == pytest.approx(torch.stack(per_image).mean().item(), rel=1e-5)


def test_ibot_loss_weights_each_masked_image_equally():
    temp = 0.1
    masks = torch.tensor([[True, True, False], [False, False, False], [False, True, False]])
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.3, 0.2]])  # rows follow masks' True entries
    t = torch.tensor([[0.7, 0.3], [0.4, 0.6], [0.5, 0.5]])
    ce = [_ce(t[i].tolist(), s[i].tolist(), temp) for i in range(3)]
    expected = ((ce[0] + ce[1]) / 2 + ce[2]) / 3  # image 0 has 2 patches, image 2 one; 3 images
    assert ibot_loss(s, t, masks, temp).item() == pytest.approx(expected, rel=1e-6)
    assert ibot_loss(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(3, 3, dtype=torch.bool)).item() == 0.0


def test_sinkhorn_knopp_rows_sum_to_one_and_prototypes_share_mass():
    torch.manual_seed(0)
    logits = torch.randn(64, 16) * 0.3  # cosine-like scores
    q = sinkhorn_knopp(logits, temperature=0.1, n_iterations=50)
    assert torch.allclose(q.sum(dim=1), torch.ones(64), atol=1e-5)
    assert torch.allclose(q.sum(dim=0), torch.full((16,), 64 / 16), atol=1e-2)
    # three iterations (DINOv2's default): rows exact, columns close to equal
    q3 = sinkhorn_knopp(logits, temperature=0.1)
    assert torch.allclose(q3.sum(dim=1), torch.ones(64), atol=1e-5)
    assert (q3.sum(dim=0) - 4).abs().max() < (torch.softmax(logits / 0.1, -1).sum(0) - 4).abs().max()


def _sinkhorn_rank(rank: int, port: int, logits: torch.Tensor, out: dict) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        centering = TeacherCentering(logits.shape[1], centering="sinkhorn_knopp")
        mine = logits if rank == 1 else logits[:0]  # rank 0: no masked patch in its batch
        out[rank] = centering(mine, temperature=0.1)
    finally:
        dist.destroy_process_group()


@pytest.mark.integration
def test_sinkhorn_centering_with_an_empty_rank_joins_the_collectives():
    # Under DDP a rank with no masked patch used to return early and skip the all-reduces inside
    # Sinkhorn-Knopp: the other ranks then waited forever. Two gloo processes, rank 0 empty.
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.manual_seed(0)
    logits = torch.randn(12, 8) * 0.3
    context = mp.get_context("spawn")
    with context.Manager() as manager:
        out = manager.dict()
        procs = [context.Process(target=_sinkhorn_rank, args=(r, port, logits, out)) for r in (0, 1)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=120)
        hung = [proc.is_alive() for proc in procs]
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        assert not any(hung), "a rank is still waiting in a collective"
        assert [proc.exitcode for proc in procs] == [0, 0]
        assert out[0].shape == (0, 8)
        # rank 1 holds every row, so its targets are the single-process ones
        assert torch.allclose(out[1], sinkhorn_knopp(logits, temperature=0.1), atol=1e-6)


def test_softmax_centering_uses_then_updates_the_running_centre():
    centering = TeacherCentering(3, "softmax", center_momentum=0.9).train()
    centering.center.copy_(torch.tensor([[1.0, 0.0, -1.0]]))
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 4.0, 1.0]])
    probs = centering(logits, temperature=0.5)
    assert torch.allclose(probs, torch.softmax((logits - torch.tensor([[1.0, 0.0, -1.0]])) / 0.5, -1))
    expected = 0.9 * torch.tensor([1.0, 0.0, -1.0]) + 0.1 * logits.mean(0)
    assert torch.allclose(centering.center[0], expected)
    centering(torch.zeros(0, 3), temperature=0.5)  # no masked patch: centre unchanged, no NaN
    assert torch.allclose(centering.center[0], expected)
    centering.eval()(logits, temperature=0.5)  # eval: no update
    assert torch.allclose(centering.center[0], expected)


def test_koleo_is_minus_log_nearest_neighbour_distance_and_zero_for_one_row():
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])  # normalised: e1, e2, (e1+e2)/sqrt2
    near = math.sqrt(2 - math.sqrt(2))  # each of e1, e2 is nearest to the diagonal, and vice versa
    assert koleo_loss(x).item() == pytest.approx(-math.log(near), rel=1e-5)
    assert koleo_loss(torch.randn(1, 8)).item() == 0.0
    duplicate = koleo_loss(torch.ones(2, 8))
    assert torch.isfinite(duplicate) and duplicate.item() > 15  # the known blow-up, still finite


@pytest.mark.parametrize("grid", [(14, 14), (2, 2), (4, 6)])
def test_block_masks_have_exactly_the_sampled_count(grid):
    generator = BlockMaskGenerator(grid)
    rng = random.Random(0)
    for count in range(0, grid[0] * grid[1] // 2 + 1):
        mask = generator(count, rng)
        assert mask.shape == grid and int(mask.sum()) == count


def test_block_masks_are_blocks_on_large_grids():
    mask = BlockMaskGenerator((14, 14))(40, random.Random(1))
    # a block mask has far fewer masked/unmasked boundaries than 40 scattered patches
    edges = (mask[1:] != mask[:-1]).sum() + (mask[:, 1:] != mask[:, :-1]).sum()
    assert edges < 60


def test_masks_cover_half_of_the_global_crops_with_ratios_in_range():
    generator = BlockMaskGenerator((10, 10))
    rng = random.Random(3)
    for _ in range(20):
        masks = sample_masks(16, generator, 0.1, 0.5, 0.5, rng)
        counts = masks.sum(dim=1)
        assert masks.shape == (16, 100) and int((counts > 0).sum()) == 8
        masked = counts[counts > 0]
        assert masked.min() >= 10 and masked.max() <= 50
    seen = torch.stack([sample_masks(4, generator, 0.1, 0.5, 0.5, rng).sum(1) > 0 for _ in range(50)])
    assert seen.any(dim=0).all()  # which crops are masked varies


def test_warmup_cosine_at_start_warmup_end_and_after_decay():
    kw = {"base": 1.0, "final": 0.1, "start": 0.2, "warmup_steps": 10, "total_steps": 110}
    assert warmup_cosine(0, **kw) == pytest.approx(0.2)
    assert warmup_cosine(5, **kw) == pytest.approx(0.6)
    assert warmup_cosine(10, **kw) == pytest.approx(1.0)
    assert warmup_cosine(60, **kw) == pytest.approx(0.55)  # half way down the cosine
    assert warmup_cosine(110, **kw) == pytest.approx(0.1)
    assert warmup_cosine(10_000, **kw) == pytest.approx(0.1)


def _sched(**kw):
    from foveal.networks.nvdinov2.config import LastLayerLearningRateScheduleConfig, SchedulerConfig

    base = {"val_base": 1.0, "val_final": 0.5, "val_start": 0.0, "warm_up_steps": 4, "max_decay_steps": 8}
    cls = LastLayerLearningRateScheduleConfig if "freeze_steps" in kw else SchedulerConfig
    return cls(**{**base, **kw})


def test_last_layer_lr_is_zero_while_frozen_and_teacher_temperature_warms_up():
    frozen = _sched(freeze_steps=6)
    assert [schedule_value(frozen, s) for s in (0, 5)] == [0.0, 0.0]
    assert schedule_value(frozen, 6) == pytest.approx(
        warmup_cosine(6, base=1.0, final=0.5, warmup_steps=4, total_steps=8)
    )
    temp = _sched(val_start=0.04, val_base=0.07, val_final=0.07, warm_up_steps=10, max_decay_steps=10)
    assert schedule_value(temp, 0) == pytest.approx(0.04)
    assert schedule_value(temp, 5) == pytest.approx(0.055)
    assert schedule_value(temp, 10) == schedule_value(temp, 1000) == pytest.approx(0.07)


def test_schedules_longer_than_the_run_are_reported_not_changed():
    schedulers = SimpleNamespace(
        learning_rate=_sched(warm_up_steps=100),
        last_layer_learning_rate=_sched(),
        weight_decay=_sched(val_base=0.04, val_final=0.2, warm_up_steps=0, max_decay_steps=1000),
        momentum=_sched(val_base=0.99, val_final=0.99, warm_up_steps=0, max_decay_steps=1000),
        teacher_temperature=_sched(val_start=0.07, val_base=0.07, val_final=0.07, warm_up_steps=500),
    )
    notes = steps_beyond_run(schedulers, total_steps=50)
    assert notes == [
        "train.schedulers.learning_rate.warm_up_steps=100 > 50 steps in this run",
        "train.schedulers.weight_decay.max_decay_steps=1000 > 50 steps in this run",
    ]
    assert schedulers.learning_rate.warm_up_steps == 100


def test_sinkhorn_knopp_stays_finite_for_large_logits():
    # exp(6 / 0.05) overflows float32; the scores' spread (1 / 0.05) does not
    q = sinkhorn_knopp(5 + torch.rand(8, 4), temperature=0.05)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(dim=1), torch.ones(8), atol=1e-5)
