"""Tiny random Hugging Face detection, segmentation, depth, CLIP and Grounding DINO folders for
the port tests: :mod:`foveal.port.examples`' models (built locally, no hub), with weights
re-drawn at a realistic scale (``tiny_models.rerandomise``): freshly initialised heads give
outputs near 0, under which a wrong export would hide."""

from __future__ import annotations

from pathlib import Path

from tiny_models import rerandomise

from foveal.port import examples
from foveal.port.examples import TASK_MODELS as TINY_TASK_MODELS  # noqa: F401 - the names the tests import


def _rerandomised(folder: Path, cls_name: str, seed: int, keep_dpt_head: bool = False) -> Path:
    import torch
    import transformers

    model = getattr(transformers, cls_name).from_pretrained(folder).eval()
    head = None
    if keep_dpt_head:
        head = {k: v.clone() for k, v in model.head.state_dict().items()}
    rerandomise(model, seed)
    if head is not None:  # keep the positive depth head of examples.save_task_model
        with torch.no_grad():
            for conv in (model.head.head[2], model.head.head[4]):
                conv.weight.abs_()
                conv.bias.fill_(0.5)
    model.save_pretrained(folder)
    return folder


def save_tiny_task_model(name: str, folder: Path, seed: int = 0) -> Path:
    examples.save_task_model(name, folder, seed)
    return _rerandomised(folder, TINY_TASK_MODELS[name][1], seed, keep_dpt_head=name == "dpt")


def save_tiny_clip(folder: Path, seed: int = 0, tokenizer: bool = True) -> Path:
    examples.save_clip(folder, seed, tokenizer)
    return _rerandomised(folder, "CLIPModel", seed)


def save_tiny_grounding_dino(folder: Path, seed: int = 0) -> Path:
    return examples.save_grounding_dino(folder, seed)
