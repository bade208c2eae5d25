"""What a workflow (or an agent) needs to know about a network before running it.

Read from the network registry only (no torch): actions, whether AutoML can run (metadata
``automl_enabled`` *and* a train schema/template that are generated and parse), the search
parameters, the monitoring metric and direction, which dataset URI feeds which spec key per
action, and the default pretrained checkpoint (and whether it is on this machine).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from foveal.networks.registry import Network

logger = logging.getLogger(__name__)

PRETRAINED_ENV = "FOVEAL_PRETRAINED_DIR"
DIRECTIONS = {"min": "minimize", "max": "maximize"}


def train_schema_status(network: Network) -> dict[str, Any]:
    """Whether the train schema and template are generated and parse, and the AutoML parameters.

    Returns:
        ``{"train_schema", "train_template", "automl_default_parameters", "error"}``.
    """
    from foveal.spec import action_schema, spec_template

    out: dict[str, Any] = {
        "train_schema": False,
        "train_template": False,
        "automl_default_parameters": [],
        "error": None,
    }
    sections = network.action_sections.get("train")
    try:
        schema = json.loads(json.dumps(action_schema(network.config_cls, "train", sections)))
        out["train_schema"] = isinstance(schema.get("properties"), dict)
        out["automl_default_parameters"] = list(schema.get("automl_default_parameters") or [])
        template = yaml.safe_load(spec_template(network.config_cls, "train", sections))
        out["train_template"] = isinstance(template, dict) and bool(template)
    except Exception as exc:  # noqa: BLE001 - a listing reports a broken schema instead of failing
        out["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        logger.debug("train schema of %s does not build", network.name, exc_info=True)
    return out


def automl_readiness(network: Network) -> dict[str, Any]:
    """``{"enabled", "runnable", "reason", ...schema status}``: can AutoML tune this network?"""
    status = train_schema_status(network)
    enabled = network.metadata.automl_enabled
    reason = None
    if not enabled:
        reason = f"{network.name} metadata sets automl_enabled: false"
    elif "train" not in network.actions:
        reason = f"{network.name} has no train action in this version"
    elif not (status["train_schema"] and status["train_template"]):
        reason = f"{network.name}'s train schema/template do not parse ({status['error'] or 'empty'})"
    elif not status["automl_default_parameters"]:
        reason = f"{network.name}'s train schema marks no automl_enabled parameter"
    return {"enabled": enabled, "runnable": reason is None, "reason": reason, **status}


def monitoring(network: Network, stage: str | None = None, has_validation: bool = True) -> dict[str, Any]:
    """The metric to watch and rank by, its direction, and where it came from.

    Args:
        stage: the train stage when the network has several (mae: pretrain / finetune).
        has_validation: whether the train job gets a validation set; without one a ``val_*``
            metric is never logged, so the network's fallback metric is used.
    """
    choice = network.metadata.monitoring.choose(stage, has_validation)
    return {"metric": choice.metric, "mode": choice.mode, "direction": choice.direction, "source": choice.source}


def automl_ranking(network: Network) -> dict[str, Any]:
    """Which metric ranks AutoML trials, with and without validation data, and why."""
    meta = network.metadata
    with_val, without = monitoring(network), monitoring(network, has_validation=False)
    return {
        "with_validation": {"metric": with_val["metric"], "direction": with_val["direction"]},
        "without_validation": {"metric": without["metric"], "direction": without["direction"]},
        "left_out_when_ranking_on_a_loss": list(meta.loss_scale_parameters),
        "why": meta.ranking_note
        or (
            f"{with_val['metric']} from the network's monitoring metadata"
            + (f"; {without['metric']} when the train spec has no validation data" if without != with_val else "")
        ),
    }


def dataset_requirements(network: Network) -> dict[str, list[dict[str, Any]]]:
    """Per action: spec key, source (``train``/``eval``/``test`` dataset URI), expected files."""
    return {
        action: [
            {
                "spec_key": need.key,
                "source": need.source,
                "required": need.required,
                "labeled": need.labeled,
                "labeled_if": dict(need.labeled_if) or None,
                "expected_files": need.expected_files,
                "layout": need.layout,
            }
            for need in needs
        ]
        for action, needs in network.metadata.dataset_requirements.items()
    }


def default_pretrained(network: Network, workspace_root: Path | None = None) -> dict[str, Any]:
    """The declared default pretrained checkpoint and whether a file for it is on this machine.

    A declared name is looked for as given, then in ``$FOVEAL_PRETRAINED_DIR`` and
    ``<workspace>/pretrained/`` (nothing is ever downloaded).
    """
    declared = network.metadata.default_pretrained_checkpoint
    info: dict[str, Any] = {"declared": declared, "path": None, "available": False}
    if not declared:
        return info
    candidates = [Path(str(declared)).expanduser()]
    if os.environ.get(PRETRAINED_ENV):
        candidates.append(Path(os.environ[PRETRAINED_ENV]).expanduser() / str(declared))
    if workspace_root is not None:
        candidates.append(Path(workspace_root) / "pretrained" / str(declared))
    for path in candidates:
        if path.is_file():
            info.update(path=str(path.absolute()), available=True)
            break
    return info


def describe_network(network: Network, workspace_root: Path | None = None) -> dict[str, Any]:
    """Everything ``foveal models --format json`` prints for one network."""
    automl = automl_readiness(network)
    watch = monitoring(network)
    meta = network.metadata
    return {
        "name": network.name,
        "description": network.description,
        "actions": list(network.actions),
        "task": meta.task,
        "automl_enabled": automl["enabled"],
        "automl_runnable": automl["runnable"],
        "automl_reason": automl["reason"],
        "train_schema": automl["train_schema"],
        "train_template": automl["train_template"],
        "automl_default_parameters": automl["automl_default_parameters"],
        "monitoring_metric": watch["metric"],
        "monitoring_direction": watch["direction"],
        "automl_ranking": automl_ranking(network),
        "monitoring_by_stage": {
            stage: {"metric": m, "direction": DIRECTIONS.get(mode, mode)}
            for stage, (m, mode) in meta.monitoring.by_stage.items()
        },
        "eval_dataset": meta.eval_dataset,
        "dataset_requirements": dataset_requirements(network),
        "base_checkpoint_key": network.start_key,
        "starts_from": [
            {"network": s.network, "key": s.key, "kind": s.kind, "stages": list(s.stages) or None}
            for s in network.start_from
        ],
        "default_pretrained_checkpoint": default_pretrained(network, workspace_root),
        "image": meta.image.container_image or meta.image.image,
    }
