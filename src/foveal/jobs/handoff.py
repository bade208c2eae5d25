"""Handoff inference: fill spec fields of a new job from its parent job (DESIGN.md).

The parent decides what is filled:

* a **train** job whose parent is a train job *starts from* the parent's selected checkpoint
  (``best`` | ``latest`` | ``epoch:N``): the network's :class:`~foveal.networks.registry.StartFrom`
  rule for the parent's network says which spec key takes which file. A train job never resumes
  its parent; resume is only for the same job (running the same command again, or
  ``train.resume_training_checkpoint_path``).
* a **downstream** action (evaluate, inference, export, gen_trt_engine) reads the network's
  handoff rules (``Network.handoff``): ``parent_model`` is the parent train job's selected
  checkpoint of ``Network.checkpoint_kind``, ``parent_onnx_file`` the ONNX file an export job
  recorded, and so on.

Checkpoints are chosen through the engine's checkpoint index
(:func:`foveal.engine.checkpoint_index.select_checkpoint`), the same code that wrote it. A parent
of the wrong network, action or stage, or one that has not finished, is one
:class:`~foveal.errors.HandoffError` line naming the parent, what it is and what to pass.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foveal.engine.checkpoint_index import Selection, parse_selection, select_checkpoint
from foveal.errors import CheckpointError, HandoffError
from foveal.jobs.model import Job, JobStatus

if TYPE_CHECKING:  # keep foveal.jobs free of the networks package at import time
    from foveal.networks.registry import Network, StartFrom

logger = logging.getLogger(__name__)

__all__ = ["apply_handoff", "describe_parent", "parse_parent_checkpoint", "resolve_handoff", "start_rule"]


def parse_parent_checkpoint(selection: Selection) -> Selection:
    """``--parent-checkpoint``: ``best``, ``latest`` or an epoch number.

    Raises:
        HandoffError: anything else.
    """
    try:
        return parse_selection(selection)
    except ValueError as exc:
        raise HandoffError(f"--parent-checkpoint: {exc}") from None


def describe_parent(parent: Job) -> str:
    """``job 2026...-a1b2c3 (a mae train job, train.stage=finetune, Done)``."""
    stage = _stage(parent)
    what = f"a {parent.network} {parent.action} job" + (f", train.stage={stage}" if stage else "")
    return f"job {parent.id} ({what}, {parent.status.value})"


def _stage(job: Job) -> str | None:
    train = job.spec.get("train") if isinstance(job.spec, Mapping) else None
    stage = train.get("stage") if isinstance(train, Mapping) else None
    return str(stage) if stage else None


def _results_dir(parent: Job) -> Path:
    if not parent.results_dir:
        raise HandoffError(f"{describe_parent(parent)} has no results folder recorded")
    return Path(parent.results_dir)


def _require_done(parent: Job, needed_by: str) -> None:
    if parent.status is JobStatus.DONE:
        return
    if parent.status in (JobStatus.PENDING, JobStatus.RUNNING):
        raise HandoffError(
            f"{describe_parent(parent)} has not finished; {needed_by} needs a finished job "
            "(wait for it with `foveal jobs watch`, or pass a Done job)"
        )
    raise HandoffError(
        f"{describe_parent(parent)} did not finish; {needed_by} needs a Done job (pass another, or rerun it)"
    )


def _select(parent: Job, selection: Selection, kind: str, needed_by: str) -> Path:
    try:
        return select_checkpoint(_results_dir(parent), selection, kind)
    except CheckpointError as exc:
        raise HandoffError(f"{describe_parent(parent)}: {exc}; {needed_by} cannot use it") from None


def start_rule(network: Network, parent: Job) -> StartFrom:
    """The :class:`StartFrom` rule a train job of ``network`` starts from ``parent`` with.

    Raises:
        HandoffError: the parent is not a train job, or of a network or stage that cannot start
            this one; the line says which jobs can.
    """
    accepted = ", ".join(
        f"{s.network} train" + (f" (train.stage={'/'.join(s.stages)})" if s.stages else "") for s in network.start_from
    )
    can = f"a {network.name} train job starts from a finished {accepted} job" if accepted else (
        f"a {network.name} train job starts from no parent job"
    )
    if parent.action != "train":
        raise HandoffError(f"{describe_parent(parent)} cannot start a train job; {can}")
    rule = network.start_rule(parent.network)
    if rule is None:
        key = network.start_key or "train.pretrained_model_path"
        raise HandoffError(
            f"{describe_parent(parent)} cannot start a {network.name} train job; {can} "
            f"(or set {key} to weights of your own, without --parent)"
        )
    stage = _stage(parent)
    if rule.stages and stage not in rule.stages:
        raise HandoffError(f"{describe_parent(parent)} cannot start a {network.name} train job; {can}")
    return rule


def _downstream_value(
    rule: str, key: str, network: Network, action: str, parent: Job, job_results_dir: Path, selection: Selection
) -> Any:
    needed_by = f"{network.name} {action} ({key})"
    if rule == "create_onnx_file":
        return str(job_results_dir / f"{network.name}.onnx")
    if rule == "output_dir":
        return str(job_results_dir)
    if rule == "parent_onnx_file":
        onnx = parent.artifacts.get("onnx")
        if parent.action != "export" or parent.network != network.name or not onnx:
            raise HandoffError(
                f"{describe_parent(parent)} recorded no ONNX file; {needed_by} takes a finished "
                f"{network.name} export job"
            )
        _require_done(parent, needed_by)
        return str(onnx)
    if rule in ("parent_model", "parent_model_folder"):
        if parent.action != "train" or parent.network != network.name:
            raise HandoffError(
                f"{describe_parent(parent)} cannot be the parent of {network.name} {action}; "
                f"pass a finished {network.name} train job"
            )
        _require_done(parent, needed_by)
        if rule == "parent_model_folder":
            return str(_results_dir(parent))
        return str(_select(parent, selection, network.checkpoint_kind, needed_by))
    raise HandoffError(f"unknown handoff rule {rule!r} for {key}")


def resolve_handoff(
    network: Network,
    action: str,
    parent: Job | None,
    *,
    job_results_dir: str | Path,
    selection: Selection = "best",
    explicit_keys: Collection[str] = (),
) -> dict[str, Any]:
    """Dotted spec overrides a new job of ``network`` ``action`` gets from ``parent``.

    Args:
        network: the network of the new job.
        action: the action of the new job.
        parent: the parent job; without one only ``create_onnx_file`` / ``output_dir`` are filled.
        job_results_dir: the new job's results folder.
        selection: which parent checkpoint is taken: ``best``, ``latest``, ``epoch:N`` or ``N``.
        explicit_keys: keys the user set; their values are never replaced (the parent is still
            checked, so a wrong parent is refused either way).

    Returns:
        ``{dotted key: value}``; apply with :func:`apply_handoff`.

    Raises:
        HandoffError: one line naming the parent and what to pass instead.
    """
    job_results_dir = Path(job_results_dir)
    explicit = set(explicit_keys)
    choice = parse_parent_checkpoint(selection)
    overrides: dict[str, Any] = {}
    if action == "train":
        if parent is not None:
            rule = start_rule(network, parent)
            needed_by = f"{network.name} train ({rule.key})"
            _require_done(parent, needed_by)
            if not _is_explicit(rule.key, explicit):
                overrides[rule.key] = str(_select(parent, choice, rule.kind, needed_by))
        overrides["results_dir"] = str(job_results_dir)
        return {k: v for k, v in overrides.items() if not _is_explicit(k, explicit)}
    for key, rule_name in (network.handoff.get(action) or {}).items():
        if parent is None and rule_name not in ("create_onnx_file", "output_dir"):
            continue
        value = _downstream_value(rule_name, key, network, action, parent, job_results_dir, choice)  # type: ignore[arg-type]
        if not _is_explicit(key, explicit):
            overrides[key] = value
    return overrides


def _is_explicit(key: str, explicit: set[str]) -> bool:
    """Whether the user set ``key`` itself or a section holding it."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in explicit for i in range(1, len(parts) + 1))


def apply_handoff(
    spec: Mapping[str, Any], overrides: Mapping[str, Any], explicit_keys: Collection[str] = ()
) -> dict[str, Any]:
    """A copy of ``spec`` with dotted ``overrides`` merged in, except keys the user set explicitly.

    Raises:
        HandoffError: a dotted key runs through a value that is not a section.
    """
    result = copy.deepcopy(dict(spec))
    explicit = set(explicit_keys)
    for key, value in overrides.items():
        if _is_explicit(key, explicit):
            continue
        *sections, leaf = key.split(".")
        node = result
        for depth, name in enumerate(sections):
            child = node.get(name)
            if child is None:
                child = node[name] = {}
            elif not isinstance(child, dict):
                where = ".".join(sections[: depth + 1])
                raise HandoffError(f"cannot set {key}: {where} is a {type(child).__name__}, not a section")
            node = child
        node[leaf] = value
    return result
