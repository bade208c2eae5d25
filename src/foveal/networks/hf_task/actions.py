"""Actions of the task networks: train, evaluate, inference, export, gen_trt_engine.

Written once for every task; what differs per task is in :mod:`.tasks`. Every action but train
rebuilds the model from the checkpoint alone (task, classes, the model's config and the
resolved spec travel inside it).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from foveal.data import make_loader
from foveal.engine import checkpoint_artifacts, fit, load_checkpoint, resolve_resume_checkpoint
from foveal.engine.supervised import OptimSettings
from foveal.engine.trainer import prepare_training, trainer_for
from foveal.networks.hf_task.config import (
    ClassifierConfig,
    DepthConfig,
    DetectionConfig,
    GroundingConfig,
    InstanceConfig,
    SegmentationConfig,
    TaskOptimConfig,
    ZeroShotConfig,
)
from foveal.networks.hf_task.model import (
    CLASSIFIER,
    GROUNDING,
    INSTANCES,
    TASK_OUTPUTS,
    ZERO_SHOT,
    GroundedDetector,
    TaskGraph,
    ZeroShotClassifier,
    load_grounded,
    load_task_model,
    load_zero_shot,
    model_from_config,
    task_outputs,
)
from foveal.networks.hf_task.tasks import TASKS, InferenceFiles, transform
from foveal.networks.registry import ActionContext, ActionResult
from foveal.networks.trt import trt_engine_action
from foveal.spec import SpecError, SpecIssue, build_config, required, to_dict
from foveal.spec.common import run_batch_size

logger = logging.getLogger(__name__)

CONFIGS: dict[str, type] = {
    "object-detection": DetectionConfig,
    "semantic-segmentation": SegmentationConfig,
    "depth-estimation": DepthConfig,
    ZERO_SHOT: ZeroShotConfig,
    GROUNDING: GroundingConfig,
    INSTANCES: InstanceConfig,
    CLASSIFIER: ClassifierConfig,
}
NETWORKS = {task: "hf_" + task.replace("-", "_") for task in CONFIGS}  # checkpoint network names


def task_of(cfg: Any) -> str:
    for task, cls in sorted(CONFIGS.items(), key=lambda item: -len(item[1].__mro__)):  # subclasses first
        if isinstance(cfg, cls):
            return task
    raise TypeError(f"{type(cfg).__name__} is not a task network's spec")


def optim_settings(optim: TaskOptimConfig) -> OptimSettings:
    scheduler = {"MultiStep": "multistep", "Cosine": "cosine", "Linear": "linear"}[optim.lr_scheduler]
    return OptimSettings(
        optimizer=optim.optimizer.lower(), lr=optim.lr, weight_decay=optim.weight_decay, momentum=optim.momentum,
        scheduler=scheduler, warmup_epochs=optim.warmup_epochs, milestones=tuple(optim.lr_steps),
        gamma=optim.lr_decay, nesterov=False,
    )  # fmt: skip


def train(cfg: Any, ctx: ActionContext) -> ActionResult:
    """Fine-tune the whole model on the task's data with its own loss."""
    from foveal.networks.hf_task.module import TaskModule

    task = task_of(cfg)
    adapter = TASKS[task]
    prepare_training(cfg.train)
    train_set, classes = adapter.datasets(cfg, ctx, "train")
    val_set = None
    if _has_validation(cfg, task):
        val_set, _ = adapter.datasets(cfg, ctx, "val", classes=classes or None)
    logger.info("train: %d images%s", len(train_set), f" in {len(classes)} classes" if classes else "")
    ckpt = resolve_resume_checkpoint(ctx.results_dir, cfg.train.resume_training_checkpoint_path)
    folder = required(cfg.model.hf_model_dir, "model.hf_model_dir")
    if task == ZERO_SHOT:
        model = load_zero_shot(folder, cfg.model.tokenizer_dir, classes, cfg.model.prompt_template)
    elif task == GROUNDING:
        model = load_grounded(folder, cfg.model.tokenizer_dir, classes)
    else:
        model = load_task_model(folder, task, classes)
    if cfg.train.pretrained_model_path and ckpt is None:
        _start_from(model, cfg.train.pretrained_model_path, task, classes)
    data = cfg.dataset
    train_loader = make_loader(train_set, data.batch_size, data.workers, train=True, collate_fn=adapter.collate)
    val_loader = (make_loader(val_set, data.batch_size, data.workers, train=False, collate_fn=adapter.collate)
                  if val_set is not None else None)  # fmt: skip
    module = TaskModule(model, task, adapter, optim_settings(cfg.train.optim), lr_backbone=cfg.train.optim.lr_backbone,
                        steps_per_epoch=max(1, len(train_loader) // cfg.train.accum_grad_batches),
                        val_set=val_set, classes=classes)  # fmt: skip
    monitor, mode = adapter.monitor if val_loader is not None else ("train_loss", "min")
    trainer = trainer_for(
        cfg.train, results_dir=ctx.results_dir, network=NETWORKS[task], config_dict=to_dict(cfg),
        status=ctx.status_writer, progress=ctx.progress, tracking=ctx.tracking, monitor=monitor, monitor_mode=mode,
        gradient_clip_val=cfg.train.clip_grad_norm or None, steps_per_epoch=len(train_loader),
    )  # fmt: skip
    before = _zero_shot_score(model, task, adapter, val_loader, val_set) if ckpt is None else {}
    fit(trainer, module, train_loader, val_loader, ckpt_path=ckpt,
        memory_hint=f"model.hf_model_dir={Path(folder).name}")  # fmt: skip
    kpis = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("train_loss",) or k.startswith("val_")}
    kpis.update(before)
    return ActionResult(kpis=kpis, artifacts=checkpoint_artifacts(ctx.results_dir))


def _zero_shot_score(model: torch.nn.Module, task: str, adapter: Any, loader: Any, dataset: Any) -> dict[str, float]:
    """A text-conditioned model's validation score before any fine-tuning: ``zero_shot_top1``
    (zero-shot classification) or ``zero_shot_mAP`` / ``zero_shot_mAP50`` (open-vocabulary
    detection)."""
    if task not in (ZERO_SHOT, GROUNDING) or loader is None:
        return {}
    meter = adapter.meter(dataset)
    training = model.training
    model.eval()
    with torch.inference_mode():
        for images, target in loader:
            adapter.update(meter, task_outputs(model, task, images), target, dataset)
    model.train(training)
    scores = adapter.scores(meter)
    found = {f"zero_shot_{name}": float(scores[name]) for name in adapter.kpis}
    logger.info("before fine-tuning: %s on %d images", ", ".join(f"{k} {v:.4f}" for k, v in found.items()),
                len(dataset))  # fmt: skip
    return found


def _start_from(model: torch.nn.Module, path: str, task: str, classes: list[str]) -> None:
    """Start from another train job's checkpoint of this task: every weight whose shape matches
    (a head trained on other classes is left at its initialisation, with one line saying so)."""
    from foveal.errors import CheckpointError

    ckpt = load_checkpoint(path, network=NETWORKS[task])
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise CheckpointError(f"train.pretrained_model_path: {path} has no weight of this model's shapes")
    skipped = sorted(set(own) - set(usable))
    model.load_state_dict(usable, strict=False)
    logger.info("started from %s: %d of %d tensors%s", path, len(usable), len(own),
                f" (left at initialisation: {', '.join(skipped[:4])}{' ...' if len(skipped) > 4 else ''})"
                if skipped else "")  # fmt: skip
    if list(ckpt.get("classes") or []) != list(classes):
        logger.warning("train.pretrained_model_path was trained on other classes (%s); its head is not used "
                       "where the shapes differ", ckpt.get("classes"))  # fmt: skip


def _has_validation(cfg: Any, task: str) -> bool:
    data = cfg.dataset
    if task in ("object-detection", GROUNDING, INSTANCES):
        return bool(data.val_data_sources.image_dir and data.val_data_sources.json_file)
    if task in (ZERO_SHOT, CLASSIFIER):
        return bool(data.val_dataset.images_dir)
    folders = data.segment if task == "semantic-segmentation" else data.depth
    return bool(folders.root_dir and folders.validation_split)


def load_task_checkpoint(path: str | Path, network: str) -> tuple[torch.nn.Module, Any, list[str], str]:
    """(model in eval mode, the trained spec, classes, task) from a task network checkpoint."""
    ckpt = load_checkpoint(path, network=network)
    task = str(ckpt["task"])
    cfg = build_config(CONFIGS[task], ckpt["config"])
    model = model_from_config(ckpt["hf_config"], task)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    if task == ZERO_SHOT:  # the prompts' token ids are buffers of the wrapper
        model = ZeroShotClassifier(model, state["input_ids"], state["attention_mask"])
    elif task == GROUNDING:  # so are the caption's and its category map
        model = GroundedDetector(model, {k: state[k] for k in ("input_ids", "attention_mask", "token_type_ids",
                                                                "label_map")})  # fmt: skip
    model.load_state_dict(state)
    return model.eval(), cfg, list(ckpt.get("classes") or []), task


def _depth_scale(cfg: Any) -> float:
    """Depth PNG units per metre of a depth spec (``dataset.depth.depth_scale``); 1000 otherwise."""
    depth = getattr(cfg.dataset, "depth", None)
    return float(depth.depth_scale) if depth is not None else 1000.0


class _Outputs:
    """What evaluate / inference run: the checkpoint's model, a TensorRT engine
    (``<action>.trt_engine``), or both, the checkpoint then giving the engine's agreement on the
    task's first output (``logits`` / ``predicted_depth``)."""

    def __init__(self, cfg: Any, action: str, task: str) -> None:
        from foveal.export.trt_runtime import AgreementMeter, meta_value
        from foveal.networks.trt import open_engine

        section = getattr(cfg, action)
        self.task, self.model, self.meter = task, None, None
        self.engine = open_engine(section, action, NETWORKS[task])
        if section.checkpoint or self.engine is None:
            self.model, trained, self.classes, _ = load_task_checkpoint(
                required(section.checkpoint, f"{action}.checkpoint"), NETWORKS[task]
            )
            _copy_preprocessing(cfg, trained)
            self.img_size = trained.dataset.img_size
            self.depth_scale = _depth_scale(trained)
        if self.engine is None:
            return
        meta = self.engine.metadata
        built_for = meta_value(meta, "task")
        if built_for and built_for != task:
            raise SpecError(SpecIssue(f"{action}.trt_engine", f"is a {built_for} engine, this spec is {task}",
                                      "build the engine from this task's export"))  # fmt: skip
        missing = [name for name in TASK_OUTPUTS[task] if name not in self.engine.output_names]
        if missing:
            raise SpecError(SpecIssue(f"{action}.trt_engine", f"has outputs {self.engine.output_names}, not {missing}",
                                      "build the engine from this network's export"))  # fmt: skip
        if self.model is None:
            aug = cfg.dataset.augmentation
            aug.mean = list(meta_value(meta, "mean", aug.mean))
            aug.std = list(meta_value(meta, "std", aug.std))
            shape = meta_value(meta, "input_shape")
            self.img_size = int(shape[1]) if shape else cfg.dataset.img_size
            self.classes = list(meta_value(meta, "classes") or [])
            self.depth_scale = float(meta_value(meta, "depth_scale", _depth_scale(cfg)))
        else:
            self.meter = AgreementMeter(self.engine.data_type, TASK_OUTPUTS[task][0])

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        reference = task_outputs(self.model, self.task, images) if self.model is not None else None
        if self.engine is None:
            assert reference is not None
            return reference
        out = self.engine.run(images)
        got = tuple(out[name] for name in TASK_OUTPUTS[self.task])
        if self.meter is not None and reference is not None:
            self.meter.add(reference[0], got[0])
        return got

    def agreement(self) -> dict[str, Any] | None:
        return self.meter.report() if self.meter is not None else None


def evaluate(cfg: Any, ctx: ActionContext) -> ActionResult:
    """The task's metrics on the evaluation split (``results.json``; KPIs in status.json); on
    ``evaluate.trt_engine`` the engine's, with a checkpoint too the TensorRT-vs-PyTorch agreement."""
    from foveal.networks.trt import agreement_kpis

    task = task_of(cfg)
    adapter = TASKS[task]
    outputs = _Outputs(cfg, "evaluate", task)
    classes = outputs.classes
    dataset, _ = adapter.datasets(cfg, ctx, "test", classes=classes or None, img_size=outputs.img_size)
    loader = make_loader(dataset, run_batch_size(cfg.evaluate, cfg.dataset.batch_size), cfg.dataset.workers,
                         train=False, collate_fn=adapter.collate)  # fmt: skip
    meter = adapter.meter(dataset)
    with torch.inference_mode():
        for images, target in loader:
            adapter.update(meter, outputs(images), target, dataset)
    scores = adapter.scores(meter)
    scores["num_images"] = len(dataset)
    if classes:
        scores["classes"] = classes
    trt = outputs.agreement()
    if trt is not None:
        scores["tensorrt_vs_pytorch"] = trt
    results = ctx.results_dir / "results.json"
    results.write_text(json.dumps(scores, indent=2), encoding="utf-8")
    kpis = {k: float(v) for k, v in scores.items() if k in adapter.kpis} | agreement_kpis(trt)
    line = ", ".join(f"{k} {v:.4f}" for k, v in kpis.items())
    return ActionResult(kpis=kpis, artifacts={"results": str(results)}, message=f"{line} on {len(dataset)} images")


def _copy_preprocessing(cfg: Any, trained: Any) -> None:
    """Evaluate and inference normalise as the model was trained, whatever their own spec says."""
    cfg.dataset.augmentation.mean = list(trained.dataset.augmentation.mean)
    cfg.dataset.augmentation.std = list(trained.dataset.augmentation.std)


def _inference_images(cfg: Any, task: str) -> str:
    data = cfg.dataset
    if task in (ZERO_SHOT, CLASSIFIER):
        return required(data.test_dataset.images_dir, "dataset.test_dataset.images_dir")
    if task in ("object-detection", GROUNDING, INSTANCES):
        return required(data.infer_data_sources.image_dir, "dataset.infer_data_sources.image_dir")
    folders = data.segment if task == "semantic-segmentation" else data.depth
    root = required(folders.root_dir, f"dataset.{'segment' if task == 'semantic-segmentation' else 'depth'}.root_dir")
    return str(Path(root) / "images" / folders.predict_split)


def inference(cfg: Any, ctx: ActionContext) -> ActionResult:
    """Detection: ``results.json`` (boxes, scores, labels per image) and drawn boxes; segmentation:
    mask PNGs and overlays; depth: 16-bit depth PNGs and colour maps. On ``inference.trt_engine``
    the engine's (with a checkpoint too: ``tensorrt_vs_pytorch.json``)."""
    from foveal.data.files import resolve_image_inputs
    from foveal.networks.trt import agreement_artifacts, agreement_kpis

    task = task_of(cfg)
    outputs = _Outputs(cfg, "inference", task)
    tf = transform(cfg, False, outputs.img_size)
    dataset = resolve_image_inputs(_inference_images(cfg, task), ctx.cache_dir, tf.image)
    scale = outputs.depth_scale if task == "depth-estimation" else 1000.0
    files = InferenceFiles(ctx.results_dir, task, outputs.classes, cfg.inference.conf_threshold, scale)
    with torch.inference_mode():
        for images, paths in make_loader(dataset, run_batch_size(cfg.inference, cfg.dataset.batch_size),
                                         cfg.dataset.workers, train=False):  # fmt: skip
            files.add(tuple(o.float() for o in outputs(images)), list(paths))
    results = files.close()
    artifacts = {"results": str(results), **{name: str(ctx.results_dir / name) for name in files.folders}}
    trt = outputs.agreement()
    artifacts.update(agreement_artifacts(trt, ctx.results_dir))
    return ActionResult(kpis={"num_images": float(files.count), **agreement_kpis(trt)}, artifacts=artifacts,
                        message=f"{files.count} images -> {results}")  # fmt: skip


def export(cfg: Any, ctx: ActionContext) -> ActionResult:
    """ONNX with the task's named outputs (``logits``, ``pred_boxes``, ``predicted_depth``), a dynamic
    batch where the model allows it, checked against PyTorch with ONNX Runtime."""
    from foveal.export import check_input_channels, export_batch_settings, export_onnx, note_export_device

    section = cfg.export
    task = task_of(cfg)
    note_export_device(section.on_cpu, section.gpu_id)
    check_input_channels(section.input_channel)
    model, trained, classes, _ = load_task_checkpoint(required(section.checkpoint, "export.checkpoint"),
                                                      NETWORKS[task])  # fmt: skip
    size = trained.dataset.img_size
    height, width = section.input_height or size, section.input_width or size
    batch, dynamic = export_batch_settings(section.batch_size)
    onnx_file = Path(section.onnx_file or ctx.results_dir / f"{NETWORKS[task]}.onnx")
    aug = trained.dataset.augmentation
    metadata = {"network": NETWORKS[task], "task": task, "classes": json.dumps(classes),
                "input_shape": json.dumps([section.input_channel, height, width]),
                "mean": json.dumps(list(aug.mean)), "std": json.dumps(list(aug.std)),
                "depth_scale": str(_depth_scale(trained))}  # fmt: skip
    example = torch.randn(batch, section.input_channel, height, width, generator=torch.Generator().manual_seed(0))
    report = export_onnx(TaskGraph(model, task).eval(), example, onnx_file, opset_version=section.opset_version,
                         dynamic_batch=dynamic, input_names=("pixel_values",), output_names=TASK_OUTPUTS[task],
                         metadata=metadata, verbose=section.verbose, fixed_batch_fallback=True)  # fmt: skip
    diff = max(report.max_abs_diff.values()) if report.max_abs_diff else float("nan")
    return ActionResult(kpis={"onnx_max_abs_diff": diff}, artifacts={"onnx": str(onnx_file)},
                        message=f"exported {onnx_file} ({', '.join(TASK_OUTPUTS[task])}; ONNX Runtime vs PyTorch "
                        f"max |diff| {diff:.2e})")  # fmt: skip


gen_trt_engine = {task: trt_engine_action(name) for task, name in NETWORKS.items()}
