"""Load backbone weights of any supported kind into an NVDINOv2 ViT, with one-line errors.

Kinds (Oquab et al., arXiv:2304.07193; registers: Darcet et al., arXiv:2309.16588):

1. a Foveal nvdinov2 backbone file (``student_epoch_*.pth`` / ``teacher_epoch_*.pth``);
2. a Foveal nvdinov2 training checkpoint (``model_epoch_*.pth``: ``student.backbone.*`` and
   ``teacher.backbone.*``; ``which`` picks one);
3. a local Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` folder (``config.json``
   + safetensors or ``pytorch_model.bin``);
4. a reference DINOv2 ``.pth`` (facebookresearch/dinov2 keys: ``cls_token``, ``pos_embed``,
   ``patch_embed.proj.*``, ``blocks.N.*`` or chunked ``blocks.C.N.*``, ``ls1.gamma``,
   ``register_tokens``, ``mask_token``, ``norm.*``), bare or inside a training checkpoint
   (``{"model": {"teacher.backbone.*": ...}}``, ``{"teacher": {"backbone.*": ...}}``).

The architecture is checked from the tensor shapes *before* loading, so a mismatch (another
ViT size, patch size or register count; a mae or classification checkpoint) is one
:class:`CheckpointError` line saying what the file holds and what to pass, never a list of
unexpected keys. Position tables are resampled to the model's grid. Files are read with
``weights_only=True`` or safetensors.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from foveal.engine.checkpoint import load_checkpoint
from foveal.errors import CheckpointError
from foveal.nn import VisionTransformer, checkpoint_filter_fn
from foveal.nn.convert_hf import convert_hf_state_dict, read_hf_weights

NETWORK = "nvdinov2"
HF_TYPES = ("dinov2", "dinov2_with_registers")
# (embed_dim, depth) -> our size name, to say in errors what a file holds.
_SIZE_NAMES = {
    (192, 12): "vit_t",
    (384, 12): "vit_s",
    (768, 12): "vit_b",
    (1024, 24): "vit_l",
    (1536, 40): "vit_g",
}
_ANCHORS = ("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")
_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")
# Tensors a file may lack: a reference/HF file may have no mask token (HF ViT), and a register
# model may start from a file without registers (they keep their initialisation).
_OPTIONAL = ("mask_token", "register_tokens")
WHAT_TO_PASS = (
    "an nvdinov2 student_epoch_*.pth / teacher_epoch_*.pth or model_epoch_*.pth file, a Hugging Face "
    "Dinov2Model folder, or a reference DINOv2 .pth"
)


@dataclass(frozen=True)
class ViTShape:
    """What a set of backbone tensors (or a model) is: width, depth, patch size, registers."""

    embed_dim: int
    depth: int
    patch_size: int
    registers: int

    @property
    def name(self) -> str:
        size = _SIZE_NAMES.get((self.embed_dim, self.depth), f"ViT D={self.embed_dim} x {self.depth} blocks")
        regs = f", {self.registers} registers" if self.registers else ""
        return f"{size}/{self.patch_size}{regs}"

    @classmethod
    def of_state(cls, state: Mapping[str, torch.Tensor]) -> ViTShape:
        patch = state["patch_embed.proj.weight"]
        blocks = {int(m.group(1)) for k in state if (m := _BLOCK_INDEX.match(k))}
        regs = state.get("register_tokens")
        return cls(
            int(patch.shape[0]),
            len(blocks),
            int(patch.shape[-1]),
            int(regs.shape[1]) if regs is not None else 0,
        )

    @classmethod
    def of_model(cls, model: VisionTransformer) -> ViTShape:
        return cls(model.embed_dim, model.n_blocks, model.patch_size, model.num_register_tokens)


# ------------------------------------------------------------------------------ reading


def _tensors_of(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Tensors of a state dict, looking inside ``state_dict`` / ``model`` / ``teacher`` wrappers."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if isinstance(value, torch.Tensor):
            flat[key] = value
        elif isinstance(value, Mapping) and key in ("state_dict", "model", "teacher", "module"):
            # {"teacher": {"backbone.*"}} (DINOv2's eval checkpoints) keeps its "teacher." prefix.
            prefix = "teacher." if key == "teacher" else ""
            flat.update({prefix + k: v for k, v in _tensors_of(value).items()})
    return flat


def _backbone_prefix(tensors: Mapping[str, torch.Tensor], which: str) -> tuple[str, bool]:
    """(prefix of the backbone to load, whether its keys are in the Hugging Face layout).

    Among several backbones (student, teacher, student EMA), ``which`` wins, then the teacher
    (the EMA weights DINOv2 releases), then the shortest prefix.
    """
    found = []
    for key in tensors:
        for anchor in _ANCHORS:
            if key == anchor or key.endswith("." + anchor):
                found.append((key[: -len(anchor)], anchor != _ANCHORS[0]))
    if not found:
        raise ValueError("no ViT patch embedding")
    found.sort(key=lambda c: (f"{which}." not in c[0], "teacher" not in c[0], len(c[0])))
    return found[0]


def _to_foveal_layout(tensors: Mapping[str, torch.Tensor], which: str) -> dict[str, torch.Tensor]:
    """The chosen backbone's tensors under our key names (prefix removed, HF converted, un-chunked)."""
    prefix, is_hf = _backbone_prefix(tensors, which)
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    if is_hf:
        model_type = "dinov2_with_registers" if "embeddings.register_tokens" in state else "dinov2"
        state = convert_hf_state_dict(state, model_type)
    else:
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "dino_head.", "ibot_head."))}
    return {_CHUNKED_BLOCK.sub(r"blocks.\1.", k): v for k, v in state.items()}


def _read_hf_folder(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"{path} is a folder without config.json; pass {WHAT_TO_PASS}")
    config = json.loads(config_file.read_text())
    model_type = config.get("model_type")
    if model_type not in HF_TYPES:
        raise CheckpointError(
            f"{path} is a Hugging Face {model_type!r} folder; nvdinov2 loads Dinov2Model or "
            "Dinov2WithRegistersModel folders (model_type dinov2 / dinov2_with_registers)"
        )
    try:
        state, weights = read_hf_weights(path)
        tensors = convert_hf_state_dict(state, model_type)
    except (FileNotFoundError, ValueError) as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    return tensors, f"Hugging Face {model_type} folder ({weights.name})"


def _read_foveal(obj: Mapping[str, Any], path: Path, which: str) -> tuple[dict[str, torch.Tensor], str]:
    network, kind = obj.get("network"), obj.get("kind", "full")
    if network != NETWORK:
        extra = f" {obj.get('stage')}" if obj.get("stage") else ""
        raise CheckpointError(f"{path} is a foveal {network}{extra} checkpoint; pass {WHAT_TO_PASS}")
    state = obj.get("state_dict")
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path} is an nvdinov2 {kind} file without a state_dict; it may be truncated")
    if kind in ("student", "teacher"):
        return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}, f"nvdinov2 {kind} backbone"
    prefix = f"{which}.backbone."
    if not any(k.startswith(prefix) for k in state):
        have = sorted({k.split(".backbone.")[0] for k in state if ".backbone." in k})
        raise CheckpointError(
            f"{path} is an nvdinov2 training checkpoint without a {which} backbone (it has: "
            f"{', '.join(have) or 'none'}); pass that run's {which}_epoch_*.pth instead"
        )
    tensors = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return tensors, f"nvdinov2 training checkpoint ({which} backbone)"


def read_backbone_state(path: str | Path, which: str = "student") -> tuple[dict[str, torch.Tensor], str]:
    """(backbone tensors in our key layout, a description of the file's kind).

    Raises:
        CheckpointError: missing, unreadable, another network's checkpoint, or no ViT inside.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"{path} not found; pass {WHAT_TO_PASS}")
    if path.is_dir():
        return _read_hf_folder(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        tensors, kind, prefer = load_file(str(path)), "safetensors file", "teacher"
    else:
        obj = load_checkpoint(path, require_foveal=False)
        if isinstance(obj.get("network"), str):
            (tensors, kind), prefer = _read_foveal(obj, path, which), which
        else:
            # DINOv2 evaluates and releases the EMA teacher: a foreign file with both gives it.
            tensors, kind, prefer = _tensors_of(obj), "reference DINOv2 checkpoint", "teacher"
    try:
        return _to_foveal_layout(tensors, prefer), kind
    except ValueError:
        raise CheckpointError(
            f"{path} holds no ViT backbone (no patch_embed.proj.weight); pass {WHAT_TO_PASS}"
        ) from None


# ------------------------------------------------------------------------------ loading


def _check_fits(found: ViTShape, model: ViTShape, path: Path, kind: str) -> None:
    if (found.embed_dim, found.depth) != (model.embed_dim, model.depth):
        raise CheckpointError(
            f"{path} ({kind}) holds a {found.name} backbone but the model is {model.name}; pass a "
            f"{model.name.split('/')[0]} file or set the backbone type to the file's size"
        )
    if found.patch_size != model.patch_size:
        raise CheckpointError(
            f"{path} ({kind}) has patch size {found.patch_size} but model.backbone.patch_size="
            f"{model.patch_size}; set model.backbone.patch_size={found.patch_size}"
        )
    if found.registers and found.registers != model.registers:
        raise CheckpointError(
            f"{path} ({kind}) has {found.registers} register tokens but the model has {model.registers}; "
            f"set model.backbone.num_register_tokens={found.registers}"
        )


def load_backbone_weights(backbone: VisionTransformer, path: str | Path, *, which: str = "student") -> str:
    """Load the backbone held by ``path`` (any kind in the module docstring) into ``backbone``.

    Args:
        backbone: the target ViT; its position table keeps its grid (the file's is resampled).
        path: file or Hugging Face folder.
        which: ``"student"`` or ``"teacher"``: the backbone taken from an nvdinov2 training
            checkpoint. Foreign files holding both (reference DINOv2 training checkpoints) give
            their teacher, the EMA weights DINOv2 evaluates and releases.

    Returns:
        A one-line description of what was loaded, for the log.

    Raises:
        CheckpointError: one line: wrong kind, or an architecture that does not fit.
    """
    path = Path(path).expanduser()
    state, kind = read_backbone_state(path, which)
    found, model = ViTShape.of_state(state), ViTShape.of_model(backbone)
    _check_fits(found, model, path, kind)
    expected = backbone.state_dict()
    filtered = checkpoint_filter_fn(state, backbone)
    missing = [k for k in expected if k not in filtered and not k.startswith(_OPTIONAL)]
    if missing:
        raise CheckpointError(
            f"{path} ({kind}) lacks {len(missing)} of the {found.name} backbone's tensors "
            f"(e.g. {', '.join(missing[:3])}); it is not a complete DINOv2 backbone"
        )
    backbone.load_state_dict(filtered, strict=False)
    fresh = [k for k in expected if k not in filtered]
    note = f"; kept initial {', '.join(fresh)}" if fresh else ""
    return f"loaded {len(filtered)} tensors of a {found.name} backbone from {kind} {path}{note}"
