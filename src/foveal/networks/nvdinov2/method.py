"""The nvdinov2 self-distillation method: student and teacher, each a ViT + DINO head (+ iBOT head).

DINOv2 (Oquab et al., arXiv:2304.07193), after DINO (arXiv:2104.14294) and iBOT
(arXiv:2111.07832). The teacher sees the global crops only, without grad, and its centred outputs
are the targets; the student sees every crop, with block masks on the global ones, and is trained
on three losses: DINO on class tokens, iBOT on masked patch tokens, KoLeo on its global class
tokens. The teacher is an EMA of the student, updated by the training loop after each optimizer
step (:meth:`NVDINOv2Method.update_ema`).

Distillation (``model.distill.enable``): the teacher is a frozen pretrained (larger) model, and
``student_ema`` is an EMA copy of the student (DINOv2's distillation recipe evaluates that copy).

Stages of :meth:`NVDINOv2Method.forward`: :meth:`teacher_targets`, :meth:`student_outputs`,
:meth:`compute_losses`. Shapes: B images, G global and L local crops, N patches per global crop,
D backbone width, K prototypes, M masked patches in the batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from foveal.networks.nvdinov2.config import NVDINOv2Config
from foveal.networks.nvdinov2.heads import DINOHead
from foveal.networks.nvdinov2.losses import TeacherCentering, dino_loss, ibot_loss, koleo_loss
from foveal.nn.vit import VisionTransformer


@dataclass(frozen=True)
class MethodSettings:
    """Everything but the backbones that shapes the method (from the spec; see :func:`settings_from_config`)."""

    num_prototypes: int = 65536
    head_layers: int = 3
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    separate_ibot_head: bool = False
    n_global_crops: int = 2
    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    student_temp: float = 0.1
    centering: str = "softmax"
    center_momentum: float = 0.9
    distill: bool = False
    disable_masking: bool = False
    pack_crops: bool = False


def settings_from_config(cfg: NVDINOv2Config) -> MethodSettings:
    """:class:`MethodSettings` from a resolved ``NVDINOv2Config``."""
    head, loss, distill = cfg.model.head, cfg.train.loss, cfg.model.distill
    return MethodSettings(
        num_prototypes=cfg.train.num_prototypes,
        head_layers=head.num_layers,
        head_hidden_dim=head.hidden_dim,
        head_bottleneck_dim=head.bottleneck_dim,
        separate_ibot_head=head.separate_ibot_head,
        n_global_crops=cfg.dataset.transform.n_global_crops,
        dino_weight=loss.dino_loss_weight,
        ibot_weight=loss.ibot_loss_weight,
        koleo_weight=loss.koleo_loss_weight,
        student_temp=loss.student_temperature,
        centering=loss.centering,
        center_momentum=loss.center_momentum,
        distill=distill.enable,
        disable_masking=distill.disable_masking,
        pack_crops=cfg.train.pack_crops,
    )


def _heads(backbone: VisionTransformer, s: MethodSettings) -> nn.ModuleDict:
    def head() -> DINOHead:
        return DINOHead(
            backbone.embed_dim, s.num_prototypes, s.head_layers, s.head_hidden_dim, s.head_bottleneck_dim
        )

    parts = {"backbone": backbone, "dino_head": head()}
    if s.separate_ibot_head:
        parts["ibot_head"] = head()
    return nn.ModuleDict(parts)


def ibot_head_of(part: nn.ModuleDict) -> nn.Module:
    """The iBOT head of a student/teacher: its own, or the shared DINO head."""
    return part["ibot_head"] if "ibot_head" in part else part["dino_head"]


def backbone_of(part: nn.ModuleDict) -> VisionTransformer:
    """The backbone of a student/teacher part."""
    return cast(VisionTransformer, part["backbone"])


@torch.no_grad()
def teacher_monitors(teacher: dict) -> dict[str, torch.Tensor]:
    """Collapse monitors of one step's teacher outputs (``teacher_targets``)."""
    from foveal.engine.online_eval import effective_rank, feature_std, mean_entropy

    cls = teacher["cls"].float()
    return {
        "teacher_entropy": torch.tensor(mean_entropy(torch.cat(teacher["dino"]))),
        "feature_std": torch.tensor(feature_std(cls)),
        "effective_rank": torch.tensor(effective_rank(cls)),
    }


class NVDINOv2Method(nn.Module):
    """Student, teacher (and in distillation the student's EMA), teacher centering, and the losses.

    Args:
        student_backbone: the trained ViT.
        teacher_backbone: a ViT of the same type (self-training: overwritten with the student's
            weights) or, in distillation, the frozen pretrained teacher.
        settings: heads, losses, crops and distillation switches.
    """

    student: nn.ModuleDict
    teacher: nn.ModuleDict
    student_ema: nn.ModuleDict | None
    dino_centering: TeacherCentering
    ibot_centering: TeacherCentering

    def __init__(
        self,
        student_backbone: VisionTransformer,
        teacher_backbone: VisionTransformer,
        settings: MethodSettings,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.student = _heads(student_backbone, settings)
        self.teacher = _heads(teacher_backbone, settings)
        if not settings.distill:
            self.teacher.load_state_dict(self.student.state_dict())  # DINOv2: teacher starts as the student
        self.teacher.requires_grad_(False)
        self.student_ema = copy.deepcopy(self.student).requires_grad_(False) if settings.distill else None
        self.dino_centering = TeacherCentering(
            settings.num_prototypes, settings.centering, settings.center_momentum
        )
        self.ibot_centering = TeacherCentering(
            settings.num_prototypes, settings.centering, settings.center_momentum
        )

    def sync_ema_from_student(self) -> None:
        """Restart the EMA copy (the teacher, or ``student_ema`` when distilling) from the student,
        e.g. after loading pretrained student weights."""
        self.ema_target.load_state_dict(self.student.state_dict())

    @property
    def ema_target(self) -> nn.ModuleDict:
        """What the student's EMA updates: the teacher, or ``student_ema`` when distilling."""
        if self.settings.distill and self.student_ema is not None:
            return self.student_ema
        return self.teacher

    # ----------------------------------------------------------------------------- stages

    @torch.no_grad()
    def teacher_targets(self, global_crops: torch.Tensor, masks: torch.Tensor, teacher_temp: float) -> dict:
        """Teacher distributions: ``dino`` G x (B, K) for the class tokens, ``ibot`` (M, K) for the
        masked patches (the teacher itself sees the unmasked crops)."""
        self.teacher.eval()  # frozen in distillation; deterministic (no drop path) in both modes
        out = backbone_of(self.teacher).forward_features(global_crops)
        cls_logits = self.teacher["dino_head"](out["x_norm_clstoken"])  # (G B, K)
        patch_logits = ibot_head_of(self.teacher)(out["x_norm_patchtokens"][masks])  # (M, K)
        dino = self.dino_centering(cls_logits, teacher_temp).chunk(self.settings.n_global_crops)
        ibot = self.ibot_centering(patch_logits, teacher_temp)
        return {"dino": list(dino), "ibot": ibot, "cls": out["x_norm_clstoken"]}

    def student_outputs(
        self, global_crops: torch.Tensor, local_crops: torch.Tensor, masks: torch.Tensor
    ) -> dict:
        """Student scores: ``cls_logits`` (G + L) x (B, K), ``patch_logits`` (M, K), and the global
        class tokens ``global_cls`` (G B, D) for KoLeo."""
        backbone = backbone_of(self.student)
        # The mask token joins the graph on every step, even when no patch is masked (or masking is
        # disabled: an all-False mask): DDP expects the same parameters to get gradients on every rank.
        use_masks = not (self.settings.distill and self.settings.disable_masking)
        global_masks = masks if use_masks else torch.zeros_like(masks)
        if self.settings.pack_crops and local_crops.numel():  # one pass, block-diagonal attention
            out, local = backbone.forward_features_list([global_crops, local_crops], [global_masks, None])
            cls_tokens = [out["x_norm_clstoken"], local["x_norm_clstoken"]]
        else:
            out = backbone.forward_features(global_crops, masks=global_masks)
            cls_tokens = [out["x_norm_clstoken"]]
            if local_crops.numel():
                cls_tokens.append(backbone.forward_features(local_crops)["x_norm_clstoken"])
        batch = len(global_crops) // self.settings.n_global_crops
        cls_logits = self.student["dino_head"](torch.cat(cls_tokens))
        patch_logits = ibot_head_of(self.student)(out["x_norm_patchtokens"][masks])
        return {
            "cls_logits": list(cls_logits.split(batch)),
            "patch_logits": patch_logits,
            "global_cls": out["x_norm_clstoken"],
        }

    def compute_losses(self, student: dict, teacher: dict, masks: torch.Tensor) -> dict[str, torch.Tensor]:
        """``dino_loss``, ``ibot_loss``, ``koleo_loss`` (unweighted) and their weighted sum ``loss``."""
        s = self.settings
        dino = dino_loss(student["cls_logits"], teacher["dino"], s.student_temp)
        ibot = ibot_loss(student["patch_logits"], teacher["ibot"], masks, s.student_temp)
        # KoLeo within each global crop's batch (DINOv2); 0 when a crop holds one image.
        koleo = torch.stack([koleo_loss(c) for c in student["global_cls"].chunk(s.n_global_crops)]).sum()
        loss = s.dino_weight * dino + s.ibot_weight * ibot + s.koleo_weight * koleo
        return {"loss": loss, "dino_loss": dino, "ibot_loss": ibot, "koleo_loss": koleo}

    def forward(self, batch: dict[str, torch.Tensor], teacher_temp: float) -> tuple[torch.Tensor, dict]:
        """One training forward pass.

        Args:
            batch: ``global_crops`` (G B, 3, S, S), ``local_crops`` (L B, 3, s, s), ``masks`` (G B, N).
            teacher_temp: teacher softmax temperature at this step.

        Returns:
            ``(loss, {"dino_loss", "ibot_loss", "koleo_loss", "teacher_entropy", "feature_std",
            "effective_rank"})``: the unweighted losses, then the label-free monitors of the
            teacher (:mod:`foveal.engine.online_eval`): the mean entropy of its DINO targets (at
            ``ln K`` when uniform) and the spread of its global class tokens.
        """
        masks = batch["masks"]
        teacher = self.teacher_targets(batch["global_crops"], masks, teacher_temp)
        student = self.student_outputs(batch["global_crops"], batch["local_crops"], masks)
        losses = self.compute_losses(student, teacher, masks)
        return losses.pop("loss"), {**losses, **teacher_monitors(teacher)}

    # ----------------------------------------------------------------------------- EMA

    @torch.no_grad()
    def update_ema(self, momentum: float) -> None:
        """``ema <- momentum * ema + (1 - momentum) * student`` for the teacher (self-training) or
        ``student_ema`` (distillation). Called by the loop after each optimizer step."""
        ema: list[torch.Tensor] = list(self.ema_target.parameters())
        current = [p.detach() for p in self.student.parameters()]
        torch._foreach_mul_(ema, momentum)
        torch._foreach_add_(ema, current, alpha=1.0 - momentum)
