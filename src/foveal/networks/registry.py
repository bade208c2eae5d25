"""The network registry: what each network is, which actions it has, how jobs hand off.

A network package (``foveal/networks/<name>/``) builds one :class:`Network` and registers it
with :func:`register_network`. Everything above this layer (CLI, jobs, workflows, AutoML) finds
networks only through this registry. Descriptors are typed: :class:`NetworkMetadata`,
:class:`Monitoring`, :class:`DatasetNeed`, :class:`StartFrom`; an action is a function
``(config, ActionContext) -> ActionResult``.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from foveal.engine.status import StatusWriter
from foveal.engine.tracking import Tracking

logger = logging.getLogger(__name__)

ACTIONS = ("train", "evaluate", "inference", "export", "gen_trt_engine")

HandoffRule = Literal[
    "parent_model", "parent_model_folder", "create_onnx_file", "output_dir", "parent_onnx_file"
]
# Handoff rules a network may declare for a spec field of a downstream action (DESIGN.md,
# "Handoff inference"). A train job's parent is declared with StartFrom instead.
HANDOFF_RULES: tuple[str, ...] = (
    "parent_model",  # the parent train job's checkpoint (best, latest or epoch N) of Network.checkpoint_kind
    "parent_model_folder",  # the parent's results folder
    "create_onnx_file",  # a fresh ONNX path inside this job's results folder
    "output_dir",  # this job's results folder
    "parent_onnx_file",  # the ONNX file the parent exported
)


# The spec sections each action's template shows (all sections are accepted in any spec).
DEFAULT_ACTION_SECTIONS: dict[str, tuple[str, ...]] = {
    "train": ("model", "dataset", "train"),
    "evaluate": ("model", "dataset", "evaluate"),
    "inference": ("model", "dataset", "inference"),
    "export": ("model", "export"),
    "gen_trt_engine": ("gen_trt_engine",),
}
# Handoff rules every action of every network has: its own folder.
COMMON_HANDOFF: dict[str, HandoffRule] = {"results_dir": "output_dir"}
# The downstream actions' rules, the same for every network unless it declares its own: the
# parent train job's checkpoint for evaluate / inference / export, the export's ONNX for the engine.
STANDARD_HANDOFF: dict[str, dict[str, HandoffRule]] = {
    "evaluate": {**COMMON_HANDOFF, "evaluate.checkpoint": "parent_model"},
    "inference": {**COMMON_HANDOFF, "inference.checkpoint": "parent_model"},
    "export": {**COMMON_HANDOFF, "export.checkpoint": "parent_model", "export.onnx_file": "create_onnx_file"},
    "gen_trt_engine": {**COMMON_HANDOFF, "gen_trt_engine.onnx_file": "parent_onnx_file"},
}


# ------------------------------------------------------------------------------------ actions


@dataclass
class ActionResult:
    """What an action returns to the job lifecycle."""

    kpis: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # kind -> path (e.g. "onnx": ".../model.onnx")
    message: str = ""


@dataclass
class ActionContext:
    """Everything an action receives besides its config: the one context of a running action.

    Attributes:
        job_id, network, action: what runs.
        results_dir: where the action writes (checkpoints, results, exports).
        workspace: the workspace root; cache_dir: its dataset extraction cache.
        debug: ``--debug`` was given.
        resumed: the job picks an interrupted run up again.
        status_writer: writes ``status.json`` (None when run outside a job, e.g. in a test).
        progress: how training shows progress: ``auto`` (a bar on a terminal, else log lines),
            ``bar``, ``plain`` (log lines) or ``off`` (the Python API's quiet default).
        tracking: the job's experiment trackers (W&B, MLflow), for the Trainer's loggers.
    """

    job_id: str
    network: str
    action: str
    results_dir: Path
    workspace: Path
    cache_dir: Path
    debug: bool = False
    resumed: bool = False
    status_writer: StatusWriter | None = field(default=None, repr=False)
    progress: str = "auto"
    tracking: Tracking | None = field(default=None, repr=False)

    def status(self, status: str, message: str, **fields: Any) -> None:
        if self.status_writer is not None:
            self.status_writer.write(status, message, **fields)


Action = Callable[[Any, ActionContext], ActionResult]
# resolve(cfg, action): cross-field checks and derived values, once, before any job exists;
# raises SpecError with every problem (action None: a spec checked for no particular action).
Resolver = Callable[[Any, "str | None"], Any]


# ----------------------------------------------------------------------------------- metadata


@dataclass(frozen=True)
class Monitoring:
    """The metric a network's train jobs are ranked and their best checkpoint picked by.

    Attributes:
        metric, mode: e.g. ``("val_top1", "max")``.
        fallback: the metric when the train job has no validation data (a ``val_*`` metric is
            then never logged); minimised.
        by_stage: ``train.stage`` -> ``(metric, mode)`` for networks with stages (mae).
    """

    metric: str
    mode: str = "min"
    fallback: str | None = None
    by_stage: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for mode in (self.mode, *(m for _, m in self.by_stage.values())):
            if mode not in ("min", "max"):
                raise ValueError(f"monitoring mode must be min or max, got {mode!r}")

    def choose(self, stage: str | None = None, has_validation: bool = True) -> MonitorChoice:
        """The metric to watch for a train job of ``stage``, with or without validation data."""
        metric, mode, source = self.metric, self.mode, "metadata"
        if stage and stage in self.by_stage:
            metric, mode = self.by_stage[stage]
            source = f"metadata (train.stage={stage})"
        if not has_validation and metric.startswith("val_") and self.fallback:
            metric, mode, source = self.fallback, "min", "fallback: no validation set"
        return MonitorChoice(metric, mode, source)

    def mode_of(self, metric: str) -> str | None:
        """The declared mode of ``metric`` (None when this network does not declare it)."""
        known = {self.metric: self.mode, **{m: d for m, d in self.by_stage.values()}}
        if self.fallback:
            known.setdefault(self.fallback, "min")
        return known.get(metric)


@dataclass(frozen=True)
class MonitorChoice:
    metric: str
    mode: str  # "min" | "max"
    source: str

    @property
    def direction(self) -> str:
        return "minimize" if self.mode == "min" else "maximize"


@dataclass(frozen=True)
class DatasetNeed:
    """A dataset one action reads: the spec key, which workflow URI feeds it, what it holds."""

    key: str
    source: str  # "train" | "eval" | "val" | "test": the workflow's dataset URI that fills it
    required: bool
    labeled: bool
    expected_files: str
    labeled_if: Mapping[str, Any] = field(default_factory=dict)  # spec values that make it labeled
    # How the URI fills the key: "folder" (the key is the URI), "coco" (a COCO dataset folder,
    # <uri>/images + <uri>/annotations.json, as an {image_dir, json_file} mapping, TAO's
    # dataset layout) or "coco_list" (a one-item list of that mapping).
    layout: str = "folder"


@dataclass(frozen=True)
class ImageRef:
    """A container image by versions-file key or full reference (TAO's two field names)."""

    image: str | None = None
    container_image: str | None = None


@dataclass(frozen=True)
class PortedFrom:
    """Where a ported network's entry and source model are."""

    entry_dir: str
    source: str | None = None
    source_task: str | None = None


@dataclass(frozen=True)
class NetworkMetadata:
    """What workflows, AutoML, platforms and agents need to know about a network.

    Attributes:
        task: e.g. ``"classification"``, ``"self-supervised"``.
        automl_enabled: whether AutoML may tune it (TAO's model metadata).
        monitoring: the ranking / best-checkpoint metric.
        dataset_requirements: action -> the datasets it reads.
        eval_dataset: ``"required"`` or ``"optional"`` for the normal-train workflow.
        default_pretrained_checkpoint: a file name looked up locally, never downloaded.
        image: the model's container image; action_images: per action.
        ported: set for networks made by ``foveal port hf``.
        loss_scale_parameters: spec keys (or section prefixes) that change the scale of the
            network's training loss (temperatures, prototype count, loss weights): a study that
            ranks trials on the loss leaves them out, since its values would not compare.
        ranking_note: why the monitoring metric ranks trials, for ``foveal models``.
    """

    task: str
    automl_enabled: bool
    monitoring: Monitoring
    dataset_requirements: Mapping[str, tuple[DatasetNeed, ...]] = field(default_factory=dict)
    eval_dataset: str = "optional"
    default_pretrained_checkpoint: str | None = None
    # Keys of the versions file (foveal/platforms/images.yaml); see `foveal image resolve`.
    image: ImageRef = field(default_factory=lambda: ImageRef(image="foveal-pytorch"))
    action_images: Mapping[str, ImageRef] = field(
        default_factory=lambda: {"gen_trt_engine": ImageRef(image="foveal-tensorrt")}
    )
    ported: PortedFrom | None = None
    loss_scale_parameters: tuple[str, ...] = ()
    ranking_note: str = ""

    def scales_loss(self, key: str) -> bool:
        """Whether ``key`` is (under) one of :attr:`loss_scale_parameters`."""
        return any(key == p or key.startswith(p + ".") for p in self.loss_scale_parameters)

    def needs(self, action: str) -> tuple[DatasetNeed, ...]:
        return tuple(self.dataset_requirements.get(action, ()))


@dataclass(frozen=True)
class StartFrom:
    """A train job of this network may start from a finished train job of ``network``: the parent's
    selected checkpoint (``--parent-checkpoint``) of ``kind`` goes into the spec key ``key``.

    Attributes:
        network: the parent's network.
        key: the spec key of the new job, e.g. ``train.pretrained_model_path``.
        kind: which file of the parent's checkpoint ("full", or e.g. nvdinov2's "student").
        stages: the parent's ``train.stage`` values accepted (empty: any).
    """

    network: str
    key: str
    kind: str = "full"
    stages: tuple[str, ...] = ()


# ------------------------------------------------------------------------------------ network


@dataclass
class Network:
    """Descriptor of one network.

    Attributes:
        name: registry name, e.g. ``"mae"``.
        config_cls: the top-level spec dataclass.
        actions: action name -> module path ``"pkg.module:function"`` (imported lazily so that
            listing networks never imports torch-heavy code) or a callable.
        metadata: see :class:`NetworkMetadata`.
        description: one line for ``foveal models``.
        action_sections: action -> the spec sections its template shows (all are accepted).
        handoff: downstream action -> {dotted spec key: handoff rule (one of HANDOFF_RULES)}.
        checkpoint_kind: which file of a parent train job ``parent_model`` picks (``"full"``,
            or nvdinov2's ``"student"``).
        start_from: the train jobs a train job of this network may start from (``--parent``).
        start_key: the train spec key a starting checkpoint goes into (``--base-checkpoint``).
        resolve: ``(cfg, action) -> cfg``: cross-field checks and derived values, raising
            ``SpecError`` with every problem it finds.
        tao_only: TAO actions of this network Foveal does not implement -> what they do (a
            spec for one is refused in one line saying so).
    """

    name: str
    config_cls: type
    actions: Mapping[str, str | Action]
    metadata: NetworkMetadata
    description: str = ""
    action_sections: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_ACTION_SECTIONS)
    )
    handoff: Mapping[str, Mapping[str, HandoffRule]] = field(default_factory=lambda: dict(STANDARD_HANDOFF))
    checkpoint_kind: str = "full"
    start_from: tuple[StartFrom, ...] = ()
    start_key: str | None = None
    resolve: Resolver | None = None
    tao_only: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for action, rules in self.handoff.items():
            if action == "train":
                raise ValueError(f"{self.name}: a train job's parents are declared with start_from")
            for key, rule in rules.items():
                if rule not in HANDOFF_RULES:
                    raise ValueError(f"{self.name}.{action}: unknown handoff rule {rule!r} for {key}")

    def get_action(self, action: str) -> Action:
        if action not in self.actions:
            raise KeyError(action)
        target = self.actions[action]
        if callable(target):
            return target
        module_name, _, attr = target.partition(":")
        function: Action = getattr(importlib.import_module(module_name), attr)
        return function

    def start_rule(self, parent_network: str) -> StartFrom | None:
        """How a train job of this network starts from a train job of ``parent_network``."""
        return next((s for s in self.start_from if s.network == parent_network), None)


_NETWORKS: dict[str, Network] = {}
_BUILTINS = ("classification", "mae", "nvdinov2")
_loaded_builtins = False


def register_network(network: Network) -> Network:
    """Add a network; a second registration under the same name replaces it with a warning."""
    if network.name in _NETWORKS and _NETWORKS[network.name] is not network:
        logger.warning("network %r registered twice; the later one wins", network.name)
    _NETWORKS[network.name] = network
    return network


def _load_builtins() -> None:
    global _loaded_builtins
    if _loaded_builtins:
        return
    _loaded_builtins = True
    for name in _BUILTINS:
        importlib.import_module(f"foveal.networks.{name}")


def get_network(name: str) -> Network:
    """The registered network ``name``; ``KeyError`` with the known names otherwise.

    A name not registered yet is also looked up among the ported networks of the workspace
    ``$FOVEAL_WORKSPACE`` (default ``./foveal-workspace``), so that a job of a ported network
    runs from a fresh process that only knows its workspace.
    """
    _load_builtins()
    if name not in _NETWORKS:
        load_workspace_networks(_default_workspace())
    if name not in _NETWORKS:
        raise KeyError(name)
    return _NETWORKS[name]


def list_networks() -> list[Network]:
    _load_builtins()
    return [_NETWORKS[n] for n in sorted(_NETWORKS)]


# ------------------------------------------------------------------ ported networks (workspace)

WORKSPACE_NETWORKS_DIR = "networks"  # <workspace>/networks/<name>/network.json


def _default_workspace() -> Path:
    # Workspace.resolve's rule, repeated here because this layer must not import foveal.jobs.
    env = os.environ.get("FOVEAL_WORKSPACE", "").strip()
    return Path(env).expanduser() if env else Path.cwd() / "foveal-workspace"


def load_workspace_networks(workspace_path: str | Path) -> list[Network]:
    """Register the networks ported into a workspace (``<workspace>/networks/*/network.json``).

    Loading is cheap (no torch): backbones are registered when an action runs. A ported network
    never shadows a built-in one; a second load of the same workspace replaces its own entries
    quietly. An unreadable entry is skipped with a warning naming its file.

    Returns:
        The networks registered from this workspace.
    """
    from foveal.networks.ported import ENTRY_FILE, ported_network

    _load_builtins()
    root = Path(workspace_path).expanduser() / WORKSPACE_NETWORKS_DIR
    if not root.is_dir():
        return []
    loaded = []
    for entry_file in sorted(root.glob(f"*/{ENTRY_FILE}")):
        try:
            network = ported_network(entry_file.parent)
        except (ValueError, KeyError) as exc:
            logger.warning("skipping ported network %s: %s", entry_file, exc)
            continue
        existing = _NETWORKS.get(network.name)
        if existing is not None and existing.metadata.ported is None:
            logger.warning(
                "ported network %s is shadowed by the built-in %r; skipped", entry_file, network.name
            )
            continue
        _NETWORKS[network.name] = network
        loaded.append(network)
    return loaded


def unregister_network(name: str) -> None:
    """Forget a ported network (built-in networks are never removed)."""
    if name in _NETWORKS and _NETWORKS[name].metadata.ported is not None:
        del _NETWORKS[name]
