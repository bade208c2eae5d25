"""Spec sections shared by every network, with TAO's key names.

Networks subclass :class:`TrainConfig` for their own training fields and reuse the other
sections as they are (or subclass them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from foveal.errors import SpecError, SpecIssue
from foveal.spec.fields import field, section

PRECISIONS = ("fp32", "bf16", "fp16")
# Every spelling TAO's networks and Lightning use for the three precisions.
PRECISION_ALIASES = {
    "fp32": "fp32",
    "32": "fp32",
    "float32": "fp32",
    "32-true": "fp32",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "bf16-mixed": "bf16",
    "fp16": "fp16",
    "16": "fp16",
    "float16": "fp16",
    "half": "fp16",
    "16-mixed": "fp16",
}
PRECISION_HELP = (
    "fp32, bf16 or fp16 (mixed precision); TAO's and Lightning's spellings 32-true, 32, bf16-mixed, "
    "16-mixed, 16 mean the same"
)


def precision_name(value: object) -> object:
    """``16-mixed`` / ``fp16`` / ``16`` ... -> ``fp16`` (a value it does not know stays as written)."""
    return PRECISION_ALIASES.get(str(value).strip().lower(), value)


def trt_data_type(value: object) -> object:
    """``FP16`` -> ``fp16``; TAO's template value ``fp32,fp16`` -> its first entry, as TAO-Deploy builds it."""
    if isinstance(value, str):
        return value.split(",")[0].strip().lower()
    return value


# ------------------------------------------------------------------------------ experiment


@dataclass
class WandBConfig:
    """TAO's ``wandb`` section: log the run to Weights & Biases."""

    enable: bool = field(
        False,
        description="Log metrics, the resolved spec and the final KPIs to Weights & Biases (pip install "
        "foveal[wandb]). Without an API key (WANDB_API_KEY or wandb login) the run is written offline, "
        "under <results_dir>/wandb, for a later 'wandb sync'. TAO's default is true but logs nothing "
        "without a login; Foveal logs only when asked.",
    )
    project: str = field("TAO Toolkit", description="W&B project.")
    entity: str | None = field(None, description="W&B team or user; empty: the API key's default entity.")
    group: str | None = field(None, description="Group runs together (e.g. one experiment's jobs).")
    tags: list[str] = field(default_factory=lambda: ["tao-toolkit"], description="Run tags.")
    reinit: bool = field(False, description="Allow a second run in the same process (W&B's reinit).")
    sync_tensorboard: bool = field(
        False, description="Also upload the TensorBoard event files W&B finds (W&B's sync_tensorboard)."
    )
    save_code: bool = field(False, description="Save the main script with the run (W&B's save_code).")
    name: str = field("TAO Toolkit Training", description="Run name; the job's action and id are appended.")
    run_id: str | None = field(
        None, description="Resume or name a W&B run by id; empty: a new id (kept across resumes of the job)."
    )


@dataclass
class MLflowConfig:
    """Log the run to MLflow (a Foveal addition; TAO has no MLflow section)."""

    enable: bool = field(
        False,
        description="Log metrics, the resolved spec and the final KPIs to MLflow (pip install foveal[mlflow]).",
    )
    tracking_uri: str | None = field(
        None,
        description="MLflow tracking URI (http://host:5000, sqlite:///path/mlflow.db, databricks). Empty: "
        "a local store, sqlite:///<workspace>/mlflow.db ($MLFLOW_TRACKING_URI when set). A user:password@ "
        "in it is masked wherever the spec is written (experiment.yaml, the job record, the run's "
        "params), so a job started in the background cannot use it: give credentials through "
        "MLflow's MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD.",
    )
    experiment_name: str = field("foveal", description="MLflow experiment the runs go to.")
    run_name: str | None = field(None, description="Run name; empty: '<network> <action> <job id>'.")
    tags: dict[str, str] = field(default_factory=dict, description="Extra run tags.")


@dataclass
class TensorBoardConfig:
    """TAO's ``train.tensorboard`` switch."""

    enabled: bool = field(
        True,
        description="Write TensorBoard event files to <results_dir>/tensorboard (metrics per logging interval "
        "and per epoch).",
    )
    infrequent_logging_frequency: int = field(
        2,
        valid_min=1,
        description="Log the slower diagnostics (learning rates, weight and gradient norms) every this many "
        "epochs.",
    )


@dataclass
class ExperimentConfig:
    """The top-level keys every network's spec has (TAO's common experiment keys)."""

    model_name: str | None = field(
        None,
        description="The network this spec is for (TAO's name, e.g. classification_pyt, or Foveal's); a spec "
        "for another network is refused.",
    )
    encryption_key: str | None = field(
        None,
        description="Key of encrypted model files: every checkpoint and ONNX file of the job is written "
        "AES-GCM encrypted under it. Empty = plain files ($FOVEAL_ENCRYPTION_KEY also works).",
    )
    results_dir: str | None = field(
        None,
        description="Root folder of the experiment: each action writes to <results_dir>/<action> unless its "
        "own <action>.results_dir is set (TAO's layout). Empty: the job's folder in the workspace.",
    )
    wandb: WandBConfig = section(WandBConfig, description="Weights & Biases logging (TAO's section).")
    mlflow: MLflowConfig = section(MLflowConfig, description="MLflow logging.")

    # The names a spec's model_name may give this network (TAO's first).
    model_names: ClassVar[tuple[str, ...]] = ()


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
        "fp32",
        valid_options=PRECISIONS,
        normalize=precision_name,
        description=f"Training precision: {PRECISION_HELP}.",
    )
    distributed_strategy: str = field(
        "ddp",
        valid_options=("ddp", "fsdp"),
        description="Multi-GPU strategy (when more than one device trains): data parallel or fully sharded.",
    )
    accum_grad_batches: int = field(1, valid_min=1, description="Batches whose gradients are summed per step.")
    seed: int = field(1234, valid_min=-1, description="Random seed; -1: not seeded (runs differ).")
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
    tensorboard: TensorBoardConfig = section(TensorBoardConfig, description="TensorBoard logging.")


@dataclass
class SpeedOptions:
    """Speed and memory switches of a ``train`` section (:mod:`foveal.engine.speed`)."""

    activation_checkpointing: bool = field(
        False, description="Recompute the backbone's block activations in backward: less memory, slower steps."
    )
    torch_compile: bool = field(
        False,
        description="Run the training forward through torch.compile (the first steps pay the compilation; on "
        "CPU it needs a C++ compiler).",
    )
    channels_last: bool = field(
        False, description="ConvNeXt V2 backbones in channels-last memory layout (faster convolutions on GPUs)."
    )


@dataclass
class EvaluateConfig:
    num_gpus: int = field(1, valid_min=1, description="Number of GPUs.")
    gpu_ids: list[int] = field(default_factory=lambda: [0], valid_min=0, description="GPU indices.")
    num_nodes: int = field(1, valid_min=1, description="Number of nodes.")
    checkpoint: str | None = field(
        None,
        required=("evaluate",),
        required_unless="trt_engine",
        parent_param=True,
        description="Checkpoint to evaluate (with trt_engine: the PyTorch side of the agreement check).",
    )
    trt_engine: str | None = field(
        None, description="TensorRT engine (gen_trt_engine) to evaluate; needs the tensorrt package and a GPU."
    )
    batch_size: int = field(-1, valid_min=-1, description="Batch size (-1: use dataset.batch_size).")
    results_dir: str | None = field(None, description="Where this action writes.")


@dataclass
class InferenceConfig:
    num_gpus: int = field(1, valid_min=1, description="Number of GPUs.")
    gpu_ids: list[int] = field(default_factory=lambda: [0], valid_min=0, description="GPU indices.")
    num_nodes: int = field(1, valid_min=1, description="Number of nodes.")
    checkpoint: str | None = field(
        None,
        required=("inference",),
        required_unless="trt_engine",
        parent_param=True,
        description="Checkpoint to run (with trt_engine: the PyTorch side of the agreement check).",
    )
    trt_engine: str | None = field(
        None, description="TensorRT engine (gen_trt_engine) to run; needs the tensorrt package and a GPU."
    )
    batch_size: int = field(-1, valid_min=-1, description="Batch size (-1: use dataset.batch_size).")
    results_dir: str | None = field(None, description="Where this action writes.")


def run_batch_size(section: EvaluateConfig | InferenceConfig, dataset_batch_size: int) -> int:
    """An evaluate / inference section's batch: its own ``batch_size``, or -1 (TAO's default)
    for the dataset's."""
    return section.batch_size if section.batch_size > 0 else dataset_batch_size


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
    data_type: str = field(
        "fp32",
        valid_options=("fp32", "fp16", "int8"),
        normalize=trt_data_type,
        description="Engine precision, any case (TAO-Deploy writes FP32). A list such as 'fp32,fp16' (TAO's "
        "template default) means its first entry, as TAO-Deploy builds it.",
    )
    workspace_size: int = field(1024, valid_min=0, description="Builder workspace in MB.")
    min_batch_size: int = field(1, valid_min=1, description="Smallest batch of the optimisation profile.")
    opt_batch_size: int = field(1, valid_min=1, description="Batch the engine is tuned for.")
    max_batch_size: int = field(1, valid_min=1, description="Largest batch of the optimisation profile.")
    layers_precision: list[str] = field(
        default_factory=list,
        description="Per-layer precision of fp16/int8 engines: '<layer name>:<fp32|fp16|int8|int32>' entries; "
        "'*' names every other layer.",
    )


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
    timing_cache: str | None = field(
        None, description="TensorRT timing cache: read when it exists, written after the build."
    )
    input_channel: int | None = field(
        None, valid_options=(1, 3), description="Input channels, for an ONNX file whose are dynamic. Empty: the file's."
    )
    input_width: int | None = field(
        None, valid_min=1, description="Input width, for an ONNX file whose is dynamic. Empty: the file's."
    )
    input_height: int | None = field(
        None, valid_min=1, description="Input height, for an ONNX file whose is dynamic. Empty: the file's."
    )
    batch_size: int = field(
        -1,
        valid_min=-1,
        description="A fixed batch for a dynamic-batch ONNX file (min = opt = max); -1: the tensorrt section's "
        "min/opt/max.",
    )
    verbose: bool = field(False, description="TensorRT's verbose log.")
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
    names: tuple[str, ...] = getattr(type(cfg), "model_names", ())
    model_name = getattr(cfg, "model_name", None)
    if model_name and names and model_name not in names:
        issues.append(
            SpecIssue(
                "model_name",
                f"{model_name!r} is another network's spec; this network is {' or '.join(names)}",
                f"run it with 'foveal {model_name.removesuffix('_pyt')} ...', or set model_name={names[0]}",
            )
        )
    train = getattr(cfg, "train", None)
    if isinstance(train, TrainConfig) and action in (None, "train"):
        issues += check_train(train)
    return issues
