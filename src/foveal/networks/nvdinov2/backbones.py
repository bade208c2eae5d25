"""Student and teacher ViT backbones of the nvdinov2 network, built from ``model.backbone``.

DINOv2 (Oquab et al., arXiv:2304.07193) uses the same architecture for student and teacher, the
teacher being an EMA of the student; in distillation the teacher is a larger frozen model. Only the
student gets stochastic depth: the teacher runs without grad and must be deterministic.
"""

from __future__ import annotations

from foveal.networks.nvdinov2.config import NVDINOv2Config
from foveal.nn.layers import set_fused_attention
from foveal.nn.registry import create_backbone
from foveal.nn.vit import VisionTransformer

WHICH = ("student", "teacher")


def backbone_type(cfg: NVDINOv2Config, which: str) -> str:
    """``model.backbone.student_type`` or ``teacher_type`` (``vit_t`` ... ``vit_g``)."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    backbone = cfg.model.backbone
    return backbone.student_type if which == "student" else backbone.teacher_type


def build_backbone(cfg: NVDINOv2Config, which: str) -> VisionTransformer:
    """The student or teacher ViT for ``cfg`` (an ``NVDINOv2Config``), randomly initialised.

    Args:
        cfg: resolved nvdinov2 spec; reads ``model.backbone`` and, for the student,
            ``train.activation_checkpointing``.
        which: ``"student"`` or ``"teacher"``.

    ``train.use_custom_attention`` (TAO: xFormers' memory-efficient kernel, else a written-out
    fallback): true keeps PyTorch's ``scaled_dot_product_attention``, which picks the flash /
    memory-efficient kernel itself; false writes the product out (the same function, more memory).
    """
    backbone = cfg.model.backbone
    model = create_backbone(
        backbone_type(cfg, which),
        img_size=backbone.img_size,
        patch_size=backbone.patch_size,
        num_register_tokens=backbone.num_register_tokens,
        drop_path_rate=backbone.drop_path_rate if which == "student" else 0.0,
    )
    if not cfg.train.use_custom_attention:
        set_fused_attention(model, False)
    if which == "student" and cfg.train.activation_checkpointing:
        model.set_grad_checkpointing(True)
    return model
