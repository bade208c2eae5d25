"""Phase 4 of a port: prove the new network works end to end, as a user would run it.

Short fine-tuning (a few steps on ``--data`` or the synthetic shapes) -> evaluate -> export ONNX,
each a real job of the ported network in the workspace; then PyTorch vs ONNX Runtime on the same
batch of real images (max |diff| <= 1e-4, fp32). ONNX Runtime's graph optimiser can change
results while the file is right (a Pad-into-MaxPool fusion breaks BiT), so a parity failure is
re-checked with optimisations off before the export is blamed, and the report says which.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from foveal.jobs.lifecycle import run_job
from foveal.jobs.workspace import Workspace

logger = logging.getLogger(__name__)

ORT_ATOL = 1e-4
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
PhaseSink = Callable[[str, str, str, dict[str, Any]], None]  # (name, status, message, figures)


def synthetic_data(ws: Workspace, image_size: int) -> Path:
    """A tiny labeled dataset (2 classes, 4 images each) in the workspace cache, made once."""
    from foveal.data.synthetic import make_demo_dataset

    root = ws.cache_dir / f"port_synthetic_{image_size}"
    if not (root / "labeled_train").is_dir():
        make_demo_dataset(
            root, num_train=8, num_val=4, num_test=0, image_size=image_size, num_classes=2,
            archives=False, num_workers=1, overwrite=True,
        )  # fmt: skip
    return root / "labeled_train"


def subset_data(source: Path, target: Path, per_class: int = 4) -> Path:
    """The first ``per_class`` images of each class folder of ``source`` (a few steps, not an epoch
    of the user's whole dataset), copied into ``target``."""
    from foveal.errors import DatasetError

    if not source.is_dir():
        raise DatasetError(source, "--data is not a folder", "pass one subfolder of images per class")
    classes = sorted(p for p in source.iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DatasetError(source, f"--data: found {len(classes)} class subfolders; need at least 2")
    if target.exists():
        shutil.rmtree(target)
    for folder in classes:
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)[:per_class]
        (target / folder.name).mkdir(parents=True)
        for image in images:
            shutil.copy2(image, target / folder.name / image.name)
    return target


def _batch(root: Path, size: int, mean: list[float], std: list[float], classes: list[str]) -> torch.Tensor:
    from foveal.data import LabeledImageFolderDataset, build_eval_transform

    dataset = LabeledImageFolderDataset(
        root, transform=build_eval_transform(size, mean, std), classes=classes
    )
    return torch.stack([dataset[i][0] for i in range(min(4, len(dataset)))])


def _ort_outputs(onnx_file: Path, x: np.ndarray, optimise: bool) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    from foveal.export.onnx_runtime import session_source

    session = ort.InferenceSession(session_source(onnx_file), options, providers=["CPUExecutionProvider"])
    return list(session.run(None, {session.get_inputs()[0].name: x}))


def _static_batch(onnx_file: Path) -> int | None:
    """The first input's batch size when the graph fixes it, else None."""
    import onnx

    if not onnx_file.is_file():  # nothing to read the batch from; the runtime will say so
        return None
    graph = onnx.load(str(onnx_file), load_external_data=False).graph
    dim = graph.input[0].type.tensor_type.shape.dim[0] if graph.input else None
    return int(dim.dim_value) if dim is not None and dim.dim_value > 0 else None


def _numpy_outputs(module: torch.nn.Module, x: torch.Tensor) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(x)
    return [o.numpy() for o in (out if isinstance(out, (tuple, list)) else (out,))]


def _worst(found: list[np.ndarray], expected: list[np.ndarray]) -> float:
    return max(float(np.abs(a - b).max()) for a, b in zip(found, expected, strict=True))


class _Features(torch.nn.Module):
    """A classifier's pooled backbone feature (B, D): the part of the graph a port changes."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        model: Any = self.model  # a Classifier
        features: torch.Tensor = model.features(x)
        return features


# Verdicts of a parity check, mildest first.
VERDICTS = (None, "ort_optimiser", "fp32_conditioning", "export")


def check_graph(
    what: str, onnx_file: Path, module: torch.nn.Module, x: torch.Tensor
) -> tuple[dict, str | None]:
    """ONNX Runtime vs ``module`` on ``x``; on a failure, find the cause.

    1. optimiser on: max |diff| <= 1e-4 -> None;
    2. optimiser off passes -> ``ort_optimiser`` (the file is right);
    3. both fp32 runtimes compared with float64 PyTorch: ORT no further from it than twice
       PyTorch fp32's own error -> ``fp32_conditioning`` (the model amplifies rounding, e.g.
       BatchNorm statistics after a few steps on tiny data; the file is right);
    4. else ``export`` (the graph itself computes something else).
    """
    batch = _static_batch(onnx_file)
    if batch is not None and batch != x.shape[0]:  # a fixed-batch export (see export_onnx)
        x = x.repeat((batch + x.shape[0] - 1) // x.shape[0], *([1] * (x.ndim - 1)))[:batch]
    expected = _numpy_outputs(module, x)
    ort = _ort_outputs(onnx_file, x.numpy(), True)
    diff = _worst(ort, expected)
    absmax = max(float(np.abs(e).max()) for e in expected)
    figures: dict[str, Any] = {
        f"{what}_absmax": absmax,
        f"ort_{what}_max_abs_diff": diff,
        # relative to the outputs' scale: a freshly initialised head's outputs are small, and an
        # absolute 1e-4 alone would hide a wrong graph under them
        f"ort_{what}_rel_diff": diff / absmax if absmax > 0 else 0.0,
    }
    if diff <= ORT_ATOL:
        return figures, None
    plain = _worst(_ort_outputs(onnx_file, x.numpy(), False), expected)
    figures[f"ort_{what}_max_abs_diff_no_optimisation"] = plain
    if plain <= ORT_ATOL:
        return figures, "ort_optimiser"
    try:
        truth = _numpy_outputs(copy.deepcopy(module).double(), x.double())
    except (RuntimeError, TypeError) as exc:  # a model that cannot run in float64
        logger.info("no float64 reference for %s: %s", what, exc)
        return figures, "export"
    torch_err, ort_err = _worst(expected, truth), _worst(ort, truth)
    figures[f"torch_{what}_fp64_error"], figures[f"ort_{what}_fp64_error"] = torch_err, ort_err
    return figures, ("fp32_conditioning" if ort_err <= 2 * torch_err + ORT_ATOL else "export")


def ort_parity(checkpoint: Path, onnx_file: Path, data_root: Path) -> dict[str, Any]:
    """PyTorch (the checkpoint) vs ONNX Runtime on the same batch of real images.

    Two graphs are compared (see :func:`check_graph`): the exported file (logits) and the
    backbone's pooled feature. After a few fine-tuning steps the head is still near its small
    initialisation, so logits are ~1e-3 and a broken backbone graph could hide under the
    tolerance; the features are O(1).

    Returns:
        Figures and ``blame``: the worst verdict of the two (see ``VERDICTS``).
    """
    import tempfile

    from foveal.export import export_onnx
    from foveal.networks.classification.actions import load_classifier

    model, cfg, classes = load_classifier(checkpoint)
    aug = cfg.dataset.augmentation
    x = _batch(data_root, cfg.dataset.img_size, list(aug.mean), list(aug.std), classes)
    features_model = _Features(model).eval()
    figures, blame = check_graph("logits", onnx_file, model, x)
    with tempfile.TemporaryDirectory(prefix="foveal-port-") as tmp:
        features_file = Path(tmp) / "features.onnx"
        export_onnx(features_model, x, features_file, dynamic_batch=True, verify=False)
        more, verdict = check_graph("features", features_file, features_model, x)
    figures.update(more)
    figures["batch"] = int(x.shape[0])
    figures["blame"] = max(blame, verdict, key=VERDICTS.index)
    return figures


_WARNINGS = {
    "ort_optimiser": "the ONNX file is right; ONNX Runtime's graph optimiser changes the results: run it "
    "with graph_optimization_level=ORT_DISABLE_ALL",
    "fp32_conditioning": "the ONNX file is right: ONNX Runtime is as close to float64 PyTorch as float32 "
    "PyTorch is; the model amplifies fp32 rounding beyond 1e-4",
}


def _run(sink: PhaseSink, phase: str, fn: Callable[[], Any]) -> Any:
    """Run one job step; record a failure line (first line of the error) and re-raise."""
    try:
        return fn()
    except Exception as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sink(phase, "fail", line, {})
        raise


def verify_network(
    name: str, ws: Workspace, data_root: Path, sink: PhaseSink, *, epochs: int = 1
) -> dict[str, Any]:
    """Train -> evaluate -> export -> ORT parity for the registered network ``name``.

    Each step reports through ``sink``; the first failing step raises (its line is recorded).

    Returns:
        ``{"jobs": {step: job id}, "onnx_file": ..., "checkpoint": ...}``.
    """
    val_root = data_root.parent / "labeled_val" if (data_root.parent / "labeled_val").is_dir() else data_root
    common = ["dataset.workers=0", "dataset.batch_size=4"]
    train_overrides = [
        *common,
        f"dataset.train_dataset.images_dir={data_root}",
        f"dataset.val_dataset.images_dir={val_root}",
        f"train.num_epochs={epochs}",
        "train.precision=fp32",
    ]
    train = _run(
        sink,
        "verify.train",
        lambda: run_job(name, "train", overrides=train_overrides, workspace=ws, new=True),
    )
    checkpoint = Path(train.artifacts.get("checkpoint", ""))
    kpis = {k: round(float(v), 6) for k, v in train.kpis.items()}
    sink("verify.train", "pass", f"job {train.id}: {epochs} epoch(s) on {data_root}", kpis)
    ev = _run(
        sink,
        "verify.evaluate",
        lambda: run_job(name, "evaluate", parent_id=train.id, workspace=ws,
                        overrides=[*common, f"dataset.val_dataset.images_dir={val_root}"]),
    )  # fmt: skip
    sink("verify.evaluate", "pass", f"job {ev.id}", {k: round(float(v), 6) for k, v in ev.kpis.items()})
    onnx_file = _export(name, ws, train.id, sink)
    figures = ort_parity(checkpoint, onnx_file, val_root)
    _judge(figures, sink)
    return {
        "jobs": {"train": train.id, "evaluate": ev.id},
        "onnx_file": str(onnx_file),
        "checkpoint": str(checkpoint),
    }


def _export(name: str, ws: Workspace, train_id: str, sink: PhaseSink) -> Path:
    """The export job; an ExportVerificationError keeps its file, which ort_parity then diagnoses."""
    from foveal.export import ExportVerificationError

    try:
        job = run_job(name, "export", parent_id=train_id, workspace=ws)
    except ExportVerificationError as exc:
        sink("verify.export", "warn", f"export job flagged a difference: {exc}", {})
        return Path(exc.report.onnx_file)
    except Exception as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        sink("verify.export", "fail", line, {})
        raise
    onnx_file = Path(job.artifacts["onnx"])
    sink(
        "verify.export", "pass", f"job {job.id}: {onnx_file.name}", {k: float(v) for k, v in job.kpis.items()}
    )
    return onnx_file


# ------------------------------------------------------------------------- detection / dense tasks


def task_synthetic_data(ws: Workspace, image_size: int) -> Path:
    """Annotated shapes (3 classes, 8 train and 4 val images) for every dense task, made once."""
    from foveal.data.synthetic_tasks import make_task_dataset

    root = ws.cache_dir / f"port_tasks_{image_size}"
    if not (root / "dataset.json").is_file():
        make_task_dataset(root, num_train=8, num_val=4, image_size=image_size, num_classes=3, overwrite=True)
    return root


def task_data_overrides(task: str, root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(train overrides, evaluate overrides) pointing a task network at ``root`` (the layout of
    :mod:`foveal.data.synthetic_tasks`)."""
    if task in ("object-detection", "zero-shot-object-detection", "instance-segmentation"):
        def source(split: str) -> dict[str, str]:
            return {"image_dir": str(root / "images" / split),
                    "json_file": str(root / "annotations" / f"instances_{split}.json")}  # fmt: skip

        return ({"dataset.train_data_sources": [source("train")], "dataset.val_data_sources": source("val")},
                {"dataset.test_data_sources": source("val")})  # fmt: skip
    if task in ("zero-shot-image-classification", "image-classification"):  # root: labeled_train/ + labeled_val/
        val = _val_root(root)
        return ({"dataset.train_dataset.images_dir": str(root), "dataset.val_dataset.images_dir": str(val)},
                {"dataset.val_dataset.images_dir": str(val)})  # fmt: skip
    key = "dataset.segment.root_dir" if task == "semantic-segmentation" else "dataset.depth.root_dir"
    return {key: str(root)}, {key: str(root)}


def _val_root(root: Path) -> Path:
    return root.parent / "labeled_val" if (root.parent / "labeled_val").is_dir() else root


def _val_images(task: str, root: Path) -> list[Path]:
    from foveal.data.images import scan_images

    classes = task in ("zero-shot-image-classification", "image-classification")
    return scan_images(_val_root(root) if classes else root / "images" / "val")[:4]


def task_parity(checkpoint: Path, onnx_file: Path, root: Path) -> dict[str, Any]:
    """PyTorch vs ONNX Runtime on a batch of the validation images, every named output compared
    (diagnosed as :func:`check_graph` does)."""
    import onnx

    from foveal.data.tasks import PairedTransform, load_image
    from foveal.networks.hf_task.actions import NETWORKS, load_task_checkpoint
    from foveal.networks.hf_task.model import TaskGraph

    network = onnx.load(str(onnx_file), load_external_data=False).metadata_props
    base = next((p.value for p in network if p.key == "network"), None) or next(iter(NETWORKS.values()))
    model, cfg, _, task = load_task_checkpoint(checkpoint, base)
    aug = cfg.dataset.augmentation
    tf = PairedTransform(cfg.dataset.img_size, aug.mean, aug.std)
    files = _val_images(task, root)
    x = torch.stack([tf.image(load_image(f)) for f in files])
    figures, blame = check_graph("outputs", onnx_file, TaskGraph(model, task).eval(), x)
    figures["batch"] = int(x.shape[0])
    figures["blame"] = blame
    return figures


def verify_task_network(name: str, task: str, ws: Workspace, root: Path, sink: PhaseSink, *,
                        epochs: int = 1) -> dict[str, Any]:  # fmt: skip
    """Train -> evaluate -> export -> ORT parity for a ported detection / segmentation / depth network."""
    train_data, eval_data = task_data_overrides(task, root)
    common = {"dataset.workers": 0, "dataset.batch_size": 4}
    train_overrides = {**common, **train_data, "train.num_epochs": epochs, "train.precision": "fp32"}
    train = _run(sink, "verify.train",
                 lambda: run_job(name, "train", overrides=train_overrides, workspace=ws, new=True))  # fmt: skip
    checkpoint = Path(train.artifacts.get("checkpoint", ""))
    sink("verify.train", "pass", f"job {train.id}: {epochs} epoch(s) on {root}",
         {k: round(float(v), 6) for k, v in train.kpis.items()})  # fmt: skip
    ev = _run(sink, "verify.evaluate",
              lambda: run_job(name, "evaluate", parent_id=train.id, workspace=ws, overrides={**common, **eval_data}))  # fmt: skip
    sink("verify.evaluate", "pass", f"job {ev.id}", {k: round(float(v), 6) for k, v in ev.kpis.items()})
    onnx_file = _export(name, ws, train.id, sink)
    figures = task_parity(checkpoint, onnx_file, root)
    _judge(figures, sink)
    return {"jobs": {"train": train.id, "evaluate": ev.id}, "onnx_file": str(onnx_file), "checkpoint": str(checkpoint)}


def _judge(figures: dict[str, Any], sink: PhaseSink) -> None:
    """Record the parity verdict; raise when the exported graph itself is wrong."""
    blame = figures["blame"]
    if blame is None:
        sink("verify.onnxruntime", "pass", f"PyTorch vs ONNX Runtime <= {ORT_ATOL:g}", figures)
    elif blame in _WARNINGS:
        sink("verify.onnxruntime", "warn", _WARNINGS[blame], figures)
    else:
        sink("verify.onnxruntime", "fail", "the exported graph computes something else than PyTorch", figures)
        worst = max(v for k, v in figures.items() if k.endswith("max_abs_diff"))
        raise RuntimeError(f"ONNX Runtime differs from PyTorch by {worst:.3g}")
