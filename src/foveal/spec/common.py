"""Spec sections shared by every network, with TAO's key names.

Networks subclass :class:`TrainConfig` for their own training fields and reuse the other
sections as they are (or subclass them).
"""

from __future__ import annotations

from dataclasses import dataclass

from foveal.errors import SpecError, SpecIssue
from foveal.spec.fields import field, section

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class CudnnConfig:
    benchmark: bool = field(False, description="Let cuDNN pick the fastest kernels (non-deterministic).")
    deterministic: bool = field(True, description="Ask cuDNN for deterministic kernels.")


@dataclass
class TrainConfig:
    """Fields every network's ``train`` section has (TAO's common train config)."""

    num_gpus: int = field(
        1,
        valid_min=1,
        description="Number of GPUs per node: the first num_gpus visible ones unless gpu_ids lists others "
        "(CPU runs ignore it).",
    )
    gpu_ids: list[int] = field(
        default_factory=lambda: [0],
        valid_min=0,
        description="Indices of the GPUs to use: num_gpus of them, or the default [0] for the first num_gpus.",
    )
    num_nodes: int = field(1, valid_min=1, description="Number of nodes for multi-node training.")
    precision: str = field(
        "fp32", valid_options=PRECISIONS, description="Training precision; fp16/bf16 are mixed precision."
    )
    distributed_strategy: str = field(
        "ddp",
        valid_options=("ddp", "fsdp"),
        description="Multi-GPU strategy (when more than one device trains): data parallel or fully sharded.",
    )
    accum_grad_batches: int = field(1, valid_min=1, description="Batches whose gradients are summed per step.")
    seed: int = field(1234, valid_min=0, description="Random seed.")
    cudnn: CudnnConfig = section(CudnnConfig, description="cuDNN settings.")
    num_epochs: int = field(
        10,
        valid_min=1,
        popular=True,
        display_name="Number of epochs",
        description="Number of training epochs.",
    )
    checkpoint_interval: int = field(
        1, valid_min=1, description="Save a full checkpoint every this many epochs (or steps, see unit)."
    )
    checkpoint_interval_unit: str = field(
        "epoch", valid_options=("epoch", "step"), description="Unit of checkpoint_interval."
    )
    validation_interval: int = field(1, valid_min=1, description="Validate every this many epochs.")
    resume_training_checkpoint_path: str | None = field(
        None,
        parent_param=True,
        description="Full training checkpoint to resume from. Empty: resume from the newest one in results_dir.",
    )
    pretrained_model_path: str | None = field(
        None, parent_param=True, description="Weights to start from (backbone or full model)."
    )
    results_dir: str | None = field(
        None, description="Where this action writes; defaults to <results_dir>/train."
    )


@dataclass
class EvaluateConfig:
    num_gpus: int = field(1, valid_min=1, description="Number of GPUs.")
    gpu_ids: list[int] = field(default_factory=lambda: [0], valid_min=0, description="GPU indices.")
    num_nodes: int = field(1, valid_min=1, description="Number of nodes.")
    checkpoint: str | None = field(
        None, required=("evaluate",), parent_param=True, description="Checkpoint to evaluate."
    )
    trt_engine: str | None = field(None, description="TensorRT engine to evaluate instead of the checkpoint.")
    batch_size: int = field(-1, valid_min=-1, description="Batch size (-1: use dataset.batch_size).")
    results_dir: str | None = field(None, description="Where this action writes.")


@dataclass
class InferenceConfig:
    num_gpus: int = field(1, valid_min=1, description="Number of GPUs.")
    gpu_ids: list[int] = field(default_factory=lambda: [0], valid_min=0, description="GPU indices.")
    num_nodes: int = field(1, valid_min=1, description="Number of nodes.")
    checkpoint: str | None = field(
        None, required=("inference",), parent_param=True, description="Checkpoint to run."
    )
    trt_engine: str | None = field(None, description="TensorRT engine to run instead of the checkpoint.")
    batch_size: int = field(-1, valid_min=-1, description="Batch size (-1: use dataset.batch_size).")
    results_dir: str | None = field(None, description="Where this action writes.")


@dataclass
class ExportConfig:
    results_dir: str | None = field(None, description="Where this action writes.")
    gpu_id: int = field(0, valid_min=0, description="GPU used for export when not on_cpu.")
    checkpoint: str | None = field(
        None, required=("export",), parent_param=True, description="Checkpoint to export."
    )
    onnx_file: str | None = field(
        None, description="Output ONNX path. Empty: <results_dir>/<network>.onnx.", regex=r".*\.onnx$"
    )
    on_cpu: bool = field(True, description="Export on CPU.")
    input_channel: int = field(3, valid_options=(1, 3), description="Input channels.")
    input_width: int = field(224, valid_min=32, description="Input width.")
    input_height: int = field(224, valid_min=32, description="Input height.")
    opset_version: int = field(17, valid_min=11, valid_max=21, description="ONNX opset.")
    batch_size: int = field(-1, valid_min=-1, description="Batch size; -1 means a dynamic batch dimension.")
    verbose: bool = field(False, description="Verbose exporter output.")


@dataclass
class TensorRTConfig:
    data_type: str = field("fp16", valid_options=("fp32", "fp16", "int8"), description="Engine precision.")
    workspace_size: int = field(1024, valid_min=0, description="Builder workspace in MB.")
    min_batch_size: int = field(1, valid_min=1, description="Smallest batch of the optimisation profile.")
    opt_batch_size: int = field(1, valid_min=1, description="Batch the engine is tuned for.")
    max_batch_size: int = field(1, valid_min=1, description="Largest batch of the optimisation profile.")


@dataclass
class GenTrtEngineConfig:
    results_dir: str | None = field(None, description="Where this action writes.")
    gpu_id: int = field(0, valid_min=0, description="GPU that builds the engine.")
    onnx_file: str | None = field(
        None, required=("gen_trt_engine",), parent_param=True, description="ONNX model to convert."
    )
    trt_engine: str | None = field(
        None, description="Output engine path. Empty: <results_dir>/<network>.engine."
    )
    input_channel: int = field(3, valid_options=(1, 3), description="Input channels.")
    input_width: int = field(224, valid_min=32, description="Input width.")
    input_height: int = field(224, valid_min=32, description="Input height.")
    opset_version: int = field(17, valid_min=11, valid_max=21, description="ONNX opset.")
    batch_size: int = field(-1, valid_min=-1, description="Batch size; -1 means dynamic.")
    verbose: bool = field(False, description="Verbose builder output.")
    tensorrt: TensorRTConfig = section(TensorRTConfig, description="TensorRT builder settings.")


# ---------------------------------------------------------------------------------------- checks


def device_ids(num_gpus: int, gpu_ids: list[int] | None, key: str = "train") -> list[int]:
    """The GPU indices a section asks for, TAO's way.

    ``gpu_ids`` of length ``num_gpus`` names the devices; the default ``[0]`` (or an empty list)
    means the first ``num_gpus`` visible GPUs. Anything else is a :class:`SpecError`.
    """
    ids = [int(i) for i in (gpu_ids or [])]
    if len(ids) == num_gpus and len(set(ids)) == len(ids):
        return ids
    if ids in ([], [0]):
        return list(range(num_gpus))
    if len(set(ids)) != len(ids):
        problem = f"{ids} names a GPU twice"
    else:
        problem = f"lists {len(ids)} GPU{'s' if len(ids) != 1 else ''} {ids} but {key}.num_gpus={num_gpus}"
    raise SpecError(
        SpecIssue(
            f"{key}.gpu_ids",
            problem,
            f"list {num_gpus} distinct indices, or leave gpu_ids at its default [0] to use the first "
            f"{key}.num_gpus GPUs",
        )
    )


def check_train(train: TrainConfig, key: str = "train") -> list[SpecIssue]:
    """Cross-field problems of the common train fields (every network's resolve step calls it)."""
    try:
        device_ids(train.num_gpus, train.gpu_ids, key)
    except SpecError as exc:
        return list(exc.issues)
    return []


def check_sections(cfg: object, action: str | None) -> list[SpecIssue]:
    """Cross-field problems of the sections every network shares, for ``action``."""
    issues: list[SpecIssue] = []
    train = getattr(cfg, "train", None)
    if isinstance(train, TrainConfig) and action in (None, "train"):
        issues += check_train(train)
    section = getattr(cfg, action, None) if action in ("evaluate", "inference") else None
    if section is not None and getattr(section, "trt_engine", None):
        issues.append(
            SpecIssue(
                f"{action}.trt_engine",
                f"running {action} on a TensorRT engine is not supported in this version",
                f"leave it empty to run the PyTorch checkpoint ({action}.checkpoint)",
            )
        )
    return issues
