"""The network registry: what each network is, which actions it has, how jobs hand off.

A network package (``foveal/networks/<name>/``) builds one :class:`Network` and registers it
with :func:`register_network`. Everything above this layer (CLI, jobs, workflows, AutoML) finds
networks only through this registry.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

ACTIONS = ("train", "evaluate", "inference", "export", "gen_trt_engine")

# Handoff rules a network may declare for a spec field (DESIGN.md, "Handoff inference").
HANDOFF_RULES = (
    "parent_model",  # the parent's checkpoint (best, latest or epoch N)
    "parent_model_folder",  # the parent's results folder
    "resume_model",  # the newest full checkpoint of the parent (resume training)
    "ptm_if_no_resume_model",  # the parent's checkpoint, unless a resume checkpoint is set
    "create_onnx_file",  # a fresh ONNX path inside this job's results folder
    "output_dir",  # this job's results folder
    "key",  # the parent's encryption_key
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
# Handoff rules every action of every network has: its own folder and the parent's key.
COMMON_HANDOFF: dict[str, str] = {"results_dir": "output_dir", "encryption_key": "key"}


@dataclass
class ActionResult:
    """What an action returns to the job runner."""

    kpis: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, str] = field(default_factory=dict)  # kind -> path (e.g. "onnx": ".../model.onnx")
    message: str = ""


class RunContext(Protocol):
    """What an action receives besides its config (implemented by ``foveal.jobs``)."""

    job_id: str
    network: str
    action: str
    results_dir: Path
    workspace: Path
    cache_dir: Path
    debug: bool

    def status(self, status: str, message: str, **fields: Any) -> None: ...


Action = Callable[[Any, RunContext], ActionResult]


@dataclass
class Network:
    """Descriptor of one network.

    Attributes:
        name: registry name, e.g. ``"mae"``.
        config_cls: the top-level spec dataclass.
        actions: action name -> module path ``"pkg.module:function"`` (imported lazily so that
            listing networks never imports torch-heavy code) or a callable.
        description: one line for ``foveal models``.
        action_sections: action -> the spec sections its template shows (all are accepted).
        handoff: action -> {dotted spec key: handoff rule (one of HANDOFF_RULES)}.
        checkpoint_globs: kind -> filename glob in a results folder, e.g.
            ``{"model": "model_epoch_*.pth", "student": "student_epoch_*.pth"}``; the first
            kind is what ``parent_model`` selects by default.
        metadata: task, automl_enabled, monitoring metric/mode, dataset requirements, image...
        resolve: optional hook computing derived values once (``cfg -> cfg``) and checking
            cross-field rules; raises ``SpecError`` with every problem it finds.
    """

    name: str
    config_cls: type
    actions: Mapping[str, str | Action]
    description: str = ""
    action_sections: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(DEFAULT_ACTION_SECTIONS)
    )
    handoff: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    checkpoint_globs: Mapping[str, str] = field(default_factory=lambda: {"model": "model_epoch_*.pth"})
    metadata: Mapping[str, Any] = field(default_factory=dict)
    resolve: Callable[[Any], Any] | None = None

    def __post_init__(self) -> None:
        for action, rules in self.handoff.items():
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
        return getattr(importlib.import_module(module_name), attr)


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
        if existing is not None and not existing.metadata.get("ported"):
            logger.warning(
                "ported network %s is shadowed by the built-in %r; skipped", entry_file, network.name
            )
            continue
        _NETWORKS[network.name] = network
        loaded.append(network)
    return loaded


def unregister_network(name: str) -> None:
    """Forget a ported network (built-in networks are never removed)."""
    if name in _NETWORKS and _NETWORKS[name].metadata.get("ported"):
        del _NETWORKS[name]
