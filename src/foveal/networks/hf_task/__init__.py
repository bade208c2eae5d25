"""Hugging Face task networks: the whole model of a detection, semantic segmentation, depth
estimation or zero-shot classification checkpoint, trained with its own loss (``foveal port hf``
makes them).

They are the bases of ported networks, as ``classification`` is for ported classifiers, and are
not registered under their own names: a port's ``network.json`` names its base
(``hf_object_detection``, ``hf_semantic_segmentation``, ``hf_depth_estimation``,
``hf_zero_shot_classification``) and
:func:`task_network` builds it.
"""

from __future__ import annotations

import functools

from foveal.networks.registry import DatasetNeed, Monitoring, Network, NetworkMetadata, StartFrom

_ACTIONS = "foveal.networks.hf_task.actions"
BASES = {
    "hf_object_detection": "object-detection",
    "hf_semantic_segmentation": "semantic-segmentation",
    "hf_depth_estimation": "depth-estimation",
    "hf_zero_shot_classification": "zero-shot-image-classification",
    "hf_zero_shot_detection": "zero-shot-object-detection",
    "hf_instance_segmentation": "instance-segmentation",
    "hf_image_classification": "image-classification",
}
_MONITOR = {
    "object-detection": Monitoring("val_mAP50", "max", fallback="train_loss"),
    "semantic-segmentation": Monitoring("val_mIoU", "max", fallback="train_loss"),
    "depth-estimation": Monitoring("val_abs_rel", "min", fallback="train_loss"),
    "zero-shot-image-classification": Monitoring("val_top1", "max", fallback="train_loss"),
    "zero-shot-object-detection": Monitoring("val_mAP50", "max", fallback="train_loss"),
    "instance-segmentation": Monitoring("val_mAP", "max", fallback="train_loss"),
    "image-classification": Monitoring("val_top1", "max", fallback="train_loss"),
}
_COCO = "a COCO folder: images/ and annotations.json (file_name relative to images/)"
_LABELED = "one subfolder of images per class (<class>/<image>), or an archive of that layout"
_FOLDERS = "images/<split>/ and {labels}/<split>/ of the same file names"


def _needs(task: str) -> dict[str, tuple[DatasetNeed, ...]]:
    if task in ("object-detection", "zero-shot-object-detection", "instance-segmentation"):  # COCO folders
        return {
            "train": (DatasetNeed("dataset.train_data_sources", "train", True, True, _COCO, layout="coco_list"),
                      DatasetNeed("dataset.val_data_sources", "eval", False, True, _COCO, layout="coco")),
            "evaluate": (DatasetNeed("dataset.test_data_sources", "eval", True, True, _COCO, layout="coco"),),
            "inference": (DatasetNeed("dataset.infer_data_sources.image_dir", "test", True, False, "images"),),
        }  # fmt: skip
    if task in ("zero-shot-image-classification", "image-classification"):  # classification's keys, layout
        return {
            "train": (DatasetNeed("dataset.train_dataset.images_dir", "train", True, True, _LABELED),
                      DatasetNeed("dataset.val_dataset.images_dir", "eval", False, True, _LABELED)),
            "evaluate": (DatasetNeed("dataset.val_dataset.images_dir", "eval", True, True, _LABELED),),
            "inference": (DatasetNeed("dataset.test_dataset.images_dir", "test", True, False, "images"),),
        }  # fmt: skip
    key = "dataset.segment.root_dir" if task == "semantic-segmentation" else "dataset.depth.root_dir"
    files = _FOLDERS.format(labels="masks" if task == "semantic-segmentation" else "depth")
    return {action: (DatasetNeed(key, "train" if action == "train" else "eval", True, True, files),)
            for action in ("train", "evaluate")}  # fmt: skip


@functools.cache
def task_network(base: str) -> Network:
    """The base network ``base`` (a key of :data:`BASES`).

    Raises:
        KeyError: not a task network.
    """
    from foveal.networks.hf_task import actions
    from foveal.networks.hf_task.config import resolve

    task = BASES[base]
    actions_of = {a: f"{_ACTIONS}:{a}" for a in ("train", "evaluate", "inference", "export")}
    return Network(
        name=base,
        config_cls=actions.CONFIGS[task],
        actions={**actions_of, "gen_trt_engine": actions.gen_trt_engine[task]},
        metadata=NetworkMetadata(
            task=task,
            automl_enabled=True,
            monitoring=_MONITOR[task],
            dataset_requirements=_needs(task),
        ),
        description=f"Hugging Face {task} model, trained whole with its own loss.",
        start_from=(StartFrom(base, "train.pretrained_model_path"),),
        resolve=resolve,
    )


__all__ = ["BASES", "task_network"]
