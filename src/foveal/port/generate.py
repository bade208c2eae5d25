"""Phase 3 of a port: write the network entry ``<workspace>/networks/<name>/``.

Layout::

    network.json         what the port made: task, source, mapping, backbone, schema defaults,
                         metadata (monitoring metric, dataset requirements, AutoML parameters)
    specs/<action>.yaml  a spec template per action (the defaults of the derived schema)
    schema/<action>.json the JSON schema per action (TAO metadata vocabulary)
    backbone.safetensors converted native weights (native mapping), or
    hf/                  the Hugging Face files (wrapped mapping)
    port_report.json     the phases, figures and files of the last port (see report.py)

The entry reuses the classification network (TAO ``classification_pyt`` schema); only the
defaults differ. It lives in the user's workspace, never inside the installed package.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from foveal.networks.ported import ENTRY_FILE, ENTRY_FORMAT, ported_network
from foveal.port.inspect import SourceInfo
from foveal.port.mapping import MappingResult

logger = logging.getLogger(__name__)

BASE_NETWORK = "classification"
MIN_INPUT = 32  # the smallest dataset.img_size a port is verified at


def fingerprint(folder: Path, options: dict[str, Any]) -> str:
    """sha256 over config.json, the weights files and the port options: same value, same port."""
    digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode())
    for name in ("config.json", "preprocessor_config.json"):
        path = folder / name
        if path.is_file():
            digest.update(path.read_bytes())
    for path in sorted([*folder.glob("*.safetensors"), *folder.glob("*.bin")]):
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


# Task -> (base network, metadata task, monitoring metric, mode).
TASK_BASES = {
    # a classifier whose head cannot be detached from its pooled feature (Perceiver's decoder)
    "image-classification": ("hf_image_classification", "classification", "val_top1", "max"),
    "object-detection": ("hf_object_detection", "object_detection", "val_mAP50", "max"),
    "semantic-segmentation": ("hf_semantic_segmentation", "segmentation", "val_mIoU", "max"),
    "depth-estimation": ("hf_depth_estimation", "depth_estimation", "val_abs_rel", "min"),
    "zero-shot-image-classification": ("hf_zero_shot_classification", "classification", "val_top1", "max"),
    "zero-shot-object-detection": ("hf_zero_shot_detection", "object_detection", "val_mAP50", "max"),
    "instance-segmentation": ("hf_instance_segmentation", "instance_segmentation", "val_mAP", "max"),
}


def schema_defaults(name: str, info: SourceInfo, input_size: int | None, whole: bool = False) -> dict[str, Any]:
    """The dotted spec defaults that make the base network's schema this model's schema (``whole``:
    a task network's, see :data:`TASK_BASES`; else classification's)."""
    size = max(MIN_INPUT, input_size or info.image_size)
    if whole:
        return {
            "model.hf_model_dir": "hf",  # relative to the entry; made absolute when it is loaded
            "dataset.img_size": size,
            "dataset.augmentation.mean": info.mean,
            "dataset.augmentation.std": info.std,
            "export.input_channel": info.num_channels,
        }
    return {
        "model.backbone.type": name,
        "dataset.img_size": size,
        "dataset.num_classes": 0,  # the classes found in the user's data
        "dataset.augmentation.mean": info.mean,
        "dataset.augmentation.std": info.std,
        "export.input_channel": info.num_channels,
    }


def entry_document(
    name: str, info: SourceInfo, mapped: MappingResult, defaults: dict[str, Any], print_: str
) -> dict[str, Any]:
    """The ``network.json`` content (unverified until phase 4 passes)."""
    if mapped.mapping == "whole":
        base, task, metric, mode = TASK_BASES[info.task]
        return {
            "format": ENTRY_FORMAT,
            "ported": True,
            "name": name,
            "base": base,
            "description": f"Ported {info.architecture}: {info.task}, the whole model trained with its own head.",
            "task": info.task,
            "source": {"path": info.folder, "model_type": info.model_type, "architecture": info.architecture,
                       "image_size": info.image_size, "num_labels": info.num_labels},  # fmt: skip
            "family": mapped.family,
            "mapping": mapped.mapping,
            "defaults": defaults,
            "metadata": {"task": task, "source_task": info.task, "automl_enabled": True,
                         "monitoring_metric": metric, "monitoring_mode": mode},  # fmt: skip
            "verified": False,
            "fingerprint": print_,
        }
    how = "native Foveal ViT" if mapped.mapping == "native" else "wrapped Hugging Face model"
    return {
        "format": ENTRY_FORMAT,
        "ported": True,
        "name": name,
        "base": BASE_NETWORK,
        "backbone_name": name,
        "description": f"Ported {info.architecture} ({how}): classification on its features.",
        "task": info.task,
        "source": {
            "path": info.folder,
            "model_type": info.model_type,
            "architecture": info.architecture,
            "image_size": info.image_size,
            "num_labels": info.num_labels,
        },
        "family": mapped.family,
        "mapping": mapped.mapping,
        "backbone": mapped.backbone,
        "embed_dim": mapped.embed_dim,
        "defaults": defaults,
        "metadata": {
            "task": "classification",
            "source_task": info.task,
            "automl_enabled": True,
            "monitoring_metric": "val_top1",
            "monitoring_mode": "max",
        },
        "verified": False,
        "fingerprint": print_,
    }


def write_entry(entry_dir: Path, document: dict[str, Any]) -> list[Path]:
    """Write network.json, then the spec templates and JSON schemas generated from the schema.

    Returns:
        The files written.
    """
    from foveal.spec import action_schema, spec_template

    entry_dir.mkdir(parents=True, exist_ok=True)
    entry_file = entry_dir / ENTRY_FILE
    entry_file.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    network = ported_network(entry_dir)
    written = [entry_file]
    train_schema = None
    for action in network.actions:
        sections = network.action_sections.get(action)
        spec_file = entry_dir / "specs" / f"{action}.yaml"
        spec_file.parent.mkdir(exist_ok=True)
        spec_file.write_text(spec_template(network.config_cls, action, sections), encoding="utf-8")
        schema = action_schema(network.config_cls, action, sections)
        schema_file = entry_dir / "schema" / f"{action}.json"
        schema_file.parent.mkdir(exist_ok=True)
        schema_file.write_text(json.dumps(schema, indent=2) + "\n", encoding="utf-8")
        written += [spec_file, schema_file]
        train_schema = schema if action == "train" else train_schema
    if train_schema is not None:  # AutoML's parameters, as the schema declares them
        document["metadata"]["automl_default_parameters"] = train_schema["automl_default_parameters"]
        entry_file.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return written


def mark_verified(entry_dir: Path, verified: bool) -> None:
    entry_file = entry_dir / ENTRY_FILE
    document = json.loads(entry_file.read_text(encoding="utf-8"))
    document["verified"] = verified
    entry_file.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
