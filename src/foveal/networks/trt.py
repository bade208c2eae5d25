"""TensorRT for every network: the gen_trt_engine action (ONNX file -> engine), and the engine
that evaluate / inference run when their section names ``trt_engine`` (TAO-Deploy's actions).

Every TAO-Deploy key of the section reaches the builder: ``tensorrt.data_type`` (any case),
``workspace_size``, the min/opt/max batch profile (or ``batch_size`` for one fixed batch),
``layers_precision``, ``timing_cache``, ``verbose``, ``gpu_id``, the input size of a file whose
dimensions are dynamic and, for INT8, ``tensorrt.calibration`` (networks that have it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from foveal.errors import SpecError, SpecIssue
from foveal.networks.registry import Action, ActionContext, ActionResult
from foveal.spec import required
from foveal.spec.common import GenTrtEngineConfig

logger = logging.getLogger(__name__)

# (cfg, (height, width)) -> image file -> (C, H, W) tensor, as the model was fed in training
Preprocess = Callable[[Any, tuple[int, int]], Callable[[Path], Any]]


class WithEngineSection(Protocol):
    """Any network's config: it has a ``gen_trt_engine`` section."""

    @property
    def gen_trt_engine(self) -> GenTrtEngineConfig: ...


def input_shape(g: GenTrtEngineConfig) -> tuple[int, int, int] | None:
    """``(C, H, W)`` from ``input_height/width`` (and ``input_channel``, default 3) when set;
    None: the ONNX file's own dims."""
    if g.input_height is None and g.input_width is None:
        return None
    if g.input_height is None or g.input_width is None:
        missing = "input_height" if g.input_height is None else "input_width"
        raise SpecError(
            SpecIssue(
                f"gen_trt_engine.{missing}",
                "empty while the other input side is set",
                "give input_height and input_width together, or neither (the ONNX file's)",
            )
        )
    return (g.input_channel or 3, g.input_height, g.input_width)


def batch_profile(g: GenTrtEngineConfig) -> tuple[int, int, int]:
    """min/opt/max batch: ``batch_size`` (when not -1) fixes all three, as TAO-Deploy does."""
    t = g.tensorrt
    if g.batch_size != -1:
        return g.batch_size, g.batch_size, g.batch_size
    if not t.min_batch_size <= t.opt_batch_size <= t.max_batch_size:
        raise SpecError(
            SpecIssue(
                "gen_trt_engine.tensorrt",
                f"needs min_batch_size <= opt_batch_size <= max_batch_size, got {t.min_batch_size}, "
                f"{t.opt_batch_size}, {t.max_batch_size}",
            )
        )
    return t.min_batch_size, t.opt_batch_size, t.max_batch_size


def _onnx_image_size(onnx_file: Path) -> tuple[int, int] | None:
    from foveal.export.onnx_runtime import load_onnx_proto

    dims = load_onnx_proto(onnx_file).graph.input[0].type.tensor_type.shape.dim
    if len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
        return int(dims[2].dim_value), int(dims[3].dim_value)
    return None


def calibrator_factory(
    cfg: Any, onnx_file: Path, shape: tuple[int, int, int] | None, preprocess: Preprocess | None
) -> Callable[[Any], Any] | None:
    """For an INT8 build: a ``trt -> IInt8Calibrator`` factory from ``tensorrt.calibration``.

    Raises:
        SpecError: INT8 without a calibration section or cache to calibrate from.
    """
    from foveal.export.trt_options import CalibrationSettings, make_calibrator

    g = cfg.gen_trt_engine
    cal = getattr(g.tensorrt, "calibration", None)
    if cal is None or (not cal.cal_image_dir and not cal.cal_cache_file):
        raise SpecError(
            SpecIssue(
                "gen_trt_engine.tensorrt.data_type",
                "int8 needs calibration images or a calibration cache",
                "set gen_trt_engine.tensorrt.calibration.cal_image_dir (or cal_cache_file), or use fp16",
            )
        )
    cache = cal.cal_cache_file or str(Path(g.trt_engine or onnx_file).with_suffix(".cal.bin"))
    settings = CalibrationSettings(tuple(cal.cal_image_dir), cache, cal.cal_batch_size, cal.cal_batches)
    size = (shape[1], shape[2]) if shape else _onnx_image_size(onnx_file)
    prep = preprocess(cfg, size) if preprocess is not None and size is not None else None
    return lambda trt: make_calibrator(trt, settings, prep)


def _select_gpu(gpu_id: int) -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(gpu_id)
    elif gpu_id != 0:
        logger.warning("gen_trt_engine.gpu_id=%d: no CUDA device is visible here, so it is not used", gpu_id)


def trt_engine_action(network: str, preprocess: Preprocess | None = None) -> Action:
    """An action building ``<results_dir>/<network>.engine`` from ``gen_trt_engine.onnx_file``.

    Args:
        network: the network's name (the engine's default file name).
        preprocess: how the network turns an image file into its input, for INT8 calibration.
    """

    def gen_trt_engine(cfg: WithEngineSection, ctx: ActionContext) -> ActionResult:
        """Build a TensorRT engine from the exported ONNX file (needs TensorRT and a GPU)."""
        from foveal.export.tensorrt import build_trt_engine
        from foveal.export.trt_options import parse_layers_precision

        g = cfg.gen_trt_engine
        onnx_file = Path(required(g.onnx_file, "gen_trt_engine.onnx_file"))
        try:
            parse_layers_precision(g.tensorrt.layers_precision)
        except ValueError as exc:
            raise SpecError(SpecIssue("gen_trt_engine.tensorrt.layers_precision", str(exc))) from None
        engine = Path(g.trt_engine or ctx.results_dir / f"{network}.engine")
        shape = input_shape(g)
        low, opt, high = batch_profile(g)
        calibrator = (
            calibrator_factory(cfg, onnx_file, shape, preprocess) if g.tensorrt.data_type == "int8" else None
        )
        _select_gpu(g.gpu_id)
        info = build_trt_engine(
            onnx_file,
            engine,
            data_type=g.tensorrt.data_type,
            workspace_size_mb=g.tensorrt.workspace_size,
            min_batch=low,
            opt_batch=opt,
            max_batch=high,
            input_shape=shape,
            int8_calibrator=calibrator,
            layers_precision=list(g.tensorrt.layers_precision),
            timing_cache=g.timing_cache,
            verbose=g.verbose,
        )
        return ActionResult(artifacts={"trt_engine": str(engine)}, message=f"built {engine}: {info}")

    return gen_trt_engine


# ------------------------------------------------------------------- evaluate / inference on an engine


def open_engine(section: Any, action: str, network: str) -> Any:
    """The `TrtPredictor` of ``<action>.trt_engine``, or None when it is empty.

    Raises:
        SpecError: the engine was built from another network's export (its ``<engine>.json`` says).
    """
    from foveal.export.trt_runtime import TrtPredictor, meta_value

    path = getattr(section, "trt_engine", None)
    if not path:
        return None
    import torch

    gpu_ids = list(getattr(section, "gpu_ids", None) or [0])
    device = f"cuda:{gpu_ids[0]}" if torch.cuda.is_available() else None
    predictor = TrtPredictor(path, device=device)
    built_from = meta_value(predictor.metadata, "network")
    if built_from and built_from != network:
        raise SpecError(
            SpecIssue(
                f"{action}.trt_engine",
                f"{path} was built from a {built_from} model's ONNX file, not {network}'s",
                f"run it with 'foveal {built_from} {action}', or build an engine from this network's export",
            )
        )
    if not predictor.metadata:
        logger.warning(
            "%s has no %s.json beside it (not built by Foveal's gen_trt_engine): the spec's preprocessing and "
            "class folders are used",
            path,
            Path(path).name,
        )
    checkpoint = getattr(section, "checkpoint", None)
    logger.info(
        "%s on the %s TensorRT engine %s%s",
        action,
        predictor.data_type or "",
        path,
        f"; {action}.checkpoint {checkpoint} runs beside it for the TensorRT-vs-PyTorch agreement" if checkpoint else "",
    )
    return predictor


def agreement_artifacts(report: dict[str, Any] | None, results_dir: Path) -> dict[str, str]:
    """Write an inference's agreement report to ``tensorrt_vs_pytorch.json``; its artifact entry
    (empty without a report)."""
    if not report:
        return {}
    import json

    out = results_dir / "tensorrt_vs_pytorch.json"
    out.write_text(json.dumps(report, indent=2))
    return {"tensorrt_vs_pytorch": str(out)}


def agreement_kpis(report: dict[str, Any] | None) -> dict[str, float]:
    """KPIs of an engine-vs-PyTorch agreement report (empty without one), warning when it is outside
    the engine data type's tolerance."""
    if not report:
        return {}
    if report.get("within_tolerance") is False:
        logger.warning(
            "TensorRT %s engine vs PyTorch: max |diff| %.3g (relative %.3g) is above the %s tolerance %.3g",
            report["data_type"],
            report["max_abs_diff"],
            report["relative_max_diff"],
            report["data_type"],
            report["tolerance"],
        )
    kpis = {"trt_vs_pytorch_max_abs_diff": float(report["max_abs_diff"])}
    if "top1_agreement" in report:
        kpis["trt_vs_pytorch_top1_agreement"] = float(report["top1_agreement"])
    return kpis


class EngineLogits:
    """``images -> (B, C) logits`` from the engine of an exported classifier (output ``logits``, or
    ``probabilities`` of a graph ending in a softmax: their log, the same ranking and loss). With
    the PyTorch ``reference`` beside it, every batch also adds both class probabilities to the
    agreement meter."""

    def __init__(self, engine: Any, reference: Callable[[Any], Any] | None = None) -> None:
        from foveal.export.trt_runtime import AgreementMeter

        self.engine, self.reference = engine, reference
        self.probabilities = (engine.metadata.get("metadata") or {}).get("output") == "probabilities"
        self.meter = AgreementMeter(engine.data_type, "class probabilities") if reference is not None else None

    def __call__(self, images: Any) -> Any:
        out = next(iter(self.engine.run(images).values()))
        probabilities = out if self.probabilities else out.softmax(1)
        if self.meter is not None and self.reference is not None:
            self.meter.add(self.reference(images).float().softmax(1), probabilities)
        return out.clamp_min(1e-12).log() if self.probabilities else out

    def agreement(self) -> dict[str, Any] | None:
        return self.meter.report() if self.meter is not None else None
