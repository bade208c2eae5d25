"""nvdinov2 against the reference DINOv2 arrangement (Oquab et al., arXiv:2304.07193), and the
LayerScale effect behind the small-scale DINO collapse (bench/README.md, nvdinov2_learning).

The parity test recomputes one training forward pass the way DINOv2's ``SSLMetaArch`` lays it
out (teacher class tokens chunked and re-concatenated in swapped order so global crop A is
matched to B; local crops against both teacher crops; the sum divided by
``n_global_terms + n_local_terms`` with the global term scaled by 2; iBOT scaled by
``2 / n_global_crops``; KoLeo summed over the two global chunks) from the method's own modules,
and compares every loss. A wrong pairing, a missing swap, another averaging or a teacher fed
anything but the normalised class token changes the numbers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from foveal.networks.nvdinov2.losses import koleo_loss
from foveal.networks.nvdinov2.method import MethodSettings, NVDINOv2Method
from foveal.nn.registry import create_backbone

TINY = {"embed_dim": 32, "depth": 2, "num_heads": 2, "img_size": 32, "patch_size": 16}
STUDENT_T, TEACHER_T = 0.1, 0.04


def _method(init_values: float = 0.1) -> NVDINOv2Method:
    settings = MethodSettings(num_prototypes=64, head_hidden_dim=48, head_bottleneck_dim=16)
    torch.manual_seed(0)
    student = create_backbone("vit_t", init_values=init_values, **TINY)
    return NVDINOv2Method(student, create_backbone("vit_t", init_values=init_values, **TINY), settings)


@torch.no_grad()
def _reference_losses(method: NVDINOv2Method, batch: dict, n_local: int) -> dict[str, float]:
    """DINOv2's ``forward_backward`` arithmetic on the method's modules (first step: centre 0)."""
    g, masks = batch["global_crops"], batch["masks"]
    teacher, student = method.teacher, method.student
    with torch.no_grad():
        t_out = teacher["backbone"].forward_features(g)
        a, b = t_out["x_norm_clstoken"].chunk(2)
        t_cls = teacher["dino_head"](torch.cat((b, a)))  # swapped: A is matched to B
        t_dino = F.softmax(t_cls / TEACHER_T, dim=-1).view(2, -1, t_cls.shape[-1])
        t_ibot = F.softmax(teacher["dino_head"](t_out["x_norm_patchtokens"][masks]) / TEACHER_T, dim=-1)
    s_glob = student["backbone"].forward_features(g, masks=masks)
    s_loc = student["backbone"].forward_features(batch["local_crops"])["x_norm_clstoken"]
    s_glob_logits = student["dino_head"](s_glob["x_norm_clstoken"])
    s_loc_logits = student["dino_head"](s_loc)

    def ce(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return -(t * F.log_softmax(s / STUDENT_T, dim=-1)).sum(-1).mean()

    terms = 2 * (2 - 1) + 2 * n_local
    local = sum(ce(s, t) for s in s_loc_logits.chunk(n_local) for t in t_dino)
    global_ = 2 * ce(s_glob_logits, t_dino.flatten(0, 1))  # loss_scales = 2
    dino = (local + global_) / terms
    s_patch = student["dino_head"](s_glob["x_norm_patchtokens"][masks])
    per_patch = -(t_ibot * F.log_softmax(s_patch / STUDENT_T, dim=-1)).sum(-1)
    weights = (1 / masks.sum(-1).clamp(min=1)).unsqueeze(-1).expand_as(masks)[masks]
    ibot = (per_patch * weights).sum() / masks.shape[0] * 2 * (1 / 2)  # loss_scales * 1 / n_global
    koleo = sum(koleo_loss(p) for p in s_glob["x_norm_clstoken"].chunk(2))
    return {"dino_loss": dino.item(), "ibot_loss": ibot.item(), "koleo_loss": float(koleo)}


def test_losses_match_the_dinov2_arrangement():
    method = _method()
    method.train()
    images, n_local = 6, 3
    torch.manual_seed(1)
    masks = torch.zeros(2 * images, 4, dtype=torch.bool)
    masks[0, :2] = masks[3, 1] = masks[8, :] = True
    batch = {
        "global_crops": torch.randn(2 * images, 3, 32, 32),
        "local_crops": torch.randn(n_local * images, 3, 16, 16),
        "masks": masks,
    }
    expected = _reference_losses(method, batch, n_local)
    _, parts = method(batch, teacher_temp=TEACHER_T)
    for name, value in expected.items():
        assert math.isclose(parts[name].item(), value, rel_tol=1e-5, abs_tol=1e-6), name
    # centring applied after use: the next call sees the centre of this batch's teacher logits
    assert method.dino_centering.center.abs().sum() > 0


def _cls_cosine(init_values: float) -> float:
    """Mean off-diagonal cosine between the random-init CLS tokens of 8 different images."""
    model = _method(init_values).student["backbone"].eval()
    torch.manual_seed(2)
    with torch.no_grad():
        cls = F.normalize(model.forward_features(torch.randn(8, 3, 32, 32))["x_norm_clstoken"], dim=-1)
    sim = cls @ cls.t()
    return float((sim.sum() - sim.diagonal().sum()) / (8 * 7))


def test_dinov2_layerscale_makes_random_init_cls_tokens_identical():
    # DINOv2's LayerScale 1e-5 scales every block's output by 1e-5: at init the CLS token is its
    # learned embedding, the same for every image to float precision, so the DINO head output is
    # constant and the centred teacher uniform (the ln K plateau of small runs). With 0.1 the
    # tokens differ (1 - cos ~ 1e-3 here: the 0.02-std block weights keep them close).
    assert 1 - _cls_cosine(1e-5) < 1e-6
    assert 1 - _cls_cosine(0.1) > 1e-4
