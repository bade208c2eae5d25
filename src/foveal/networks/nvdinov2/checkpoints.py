"""Reading an nvdinov2 backbone for the downstream actions (inference, evaluate, export).

The backbone is rebuilt from the file alone: the resolved spec travels inside every nvdinov2
checkpoint (arch, patch size, registers, img_size), so a downstream job needs no model section.

Handoff gives these actions the parent's ``student_epoch_*.pth`` (or ``teacher_epoch_*.pth``).
A full ``model_epoch_*.pth`` is accepted too: it holds the same student backbone bit for bit,
so refusing it would only make the user look for another file; the log says which backbone
was used. Anything else (another network's checkpoint, a foreign file) is a one-line
:class:`CheckpointError` naming what to pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foveal.engine.checkpoint import load_checkpoint
from foveal.errors import CheckpointError
from foveal.networks.nvdinov2.config import NVDINOv2Config
from foveal.nn.vit import VisionTransformer

logger = logging.getLogger(__name__)

NETWORK = "nvdinov2"
BACKBONE_KINDS = ("student", "teacher")
_PASS = "pass a student_epoch_*.pth or teacher_epoch_*.pth from an nvdinov2 train job (or use --parent <job>)"


@dataclass
class LoadedBackbone:
    """A backbone rebuilt from an nvdinov2 checkpoint, in eval mode, and where it came from."""

    backbone: VisionTransformer
    cfg: NVDINOv2Config  # the config the checkpoint was trained with
    kind: str  # "student" | "teacher"
    arch: str
    path: Path
    epoch: int
    step: int

    @property
    def description(self) -> str:
        return f"{self.kind} {self.arch} backbone (epoch {self.epoch}, step {self.step}) from {self.path}"


def _read(path: Path, key: str) -> dict[str, Any]:
    try:
        obj = load_checkpoint(path, require_foveal=False)
    except CheckpointError as exc:
        raise CheckpointError(f"{key}: {exc}") from None
    network = obj.get("network")
    if network is None:
        raise CheckpointError(
            f"{key}: {path} is not a Foveal checkpoint; {_PASS} (foreign DINOv2 weights start a "
            "training run through train.pretrained_model_path)"
        )
    if network != NETWORK:
        stage = f" {obj['stage']}" if isinstance(obj.get("stage"), str) else ""
        raise CheckpointError(f"{key}: {path} is a {network}{stage} checkpoint; {_PASS}")
    if not isinstance(obj.get("config"), dict) or not isinstance(obj.get("state_dict"), dict):
        raise CheckpointError(f"{key}: {path} has no embedded config or state_dict; {_PASS}")
    return obj


def load_backbone_file(path: str | Path, *, key: str) -> LoadedBackbone:
    """Rebuild and load the backbone a nvdinov2 checkpoint holds.

    Args:
        path: ``student_epoch_*.pth`` / ``teacher_epoch_*.pth``, or a full ``model_epoch_*.pth``
            (its student backbone is used and the log says so).
        key: the spec key the path came from, named in errors (e.g. ``export.checkpoint``).

    Raises:
        CheckpointError: one line, naming ``key`` and the file to pass instead.
    """
    from foveal.networks.nvdinov2.backbones import backbone_type, build_backbone
    from foveal.networks.nvdinov2.config import NVDINOv2Config
    from foveal.spec import SpecError, build_config

    if not path:
        raise CheckpointError(f"{key} is empty; {_PASS}")
    path = Path(path).expanduser()
    obj = _read(path, key)
    kind = obj.get("kind", "full")
    state = obj["state_dict"]
    if kind not in BACKBONE_KINDS:
        prefix = "student.backbone."
        if not any(k.startswith(prefix) for k in state):
            raise CheckpointError(
                f"{key}: {path} is an nvdinov2 {kind} checkpoint without a student backbone; {_PASS}"
            )
        logger.info(
            "%s: %s is a full training checkpoint; using its student backbone (the student_epoch_*.pth "
            "of the same step is the smaller file to pass)",
            key,
            path,
        )
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        kind = "student"
    try:
        cfg = build_config(NVDINOv2Config, obj["config"])
    except SpecError as exc:
        raise CheckpointError(f"{key}: {path} embeds a config this version cannot read ({exc})") from None
    backbone = build_backbone(cfg, kind)
    result = backbone.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{key}: {path} does not match the {backbone_type(cfg, kind)} backbone its config describes "
            f"({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected tensors); "
            "the file may be corrupt"
        )
    epoch, step = int(obj.get("epoch", -1)), int(obj.get("step", obj.get("global_step", -1)))
    loaded = LoadedBackbone(backbone.eval(), cfg, kind, backbone_type(cfg, kind), path, epoch, step)
    logger.info("%s: %s", key, loaded.description)
    return loaded
