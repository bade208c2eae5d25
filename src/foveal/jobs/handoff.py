"""Handoff inference: fill spec fields of a new job from its parent job (DESIGN.md).

A network declares, per action, ``{dotted spec key: rule}`` (``Network.handoff``; rules in
``HANDOFF_RULES``). :func:`resolve_handoff` turns those rules into dotted overrides;
:func:`apply_handoff` merges them into a spec without touching keys the user set.

Checkpoint files follow the engine's naming: ``<kind>_epoch_{EEE}_step_{SSSSS}.pth`` or
``<kind>_epoch_{EEE}.pth``. The engine may also write ``<results>/checkpoints.json``::

    {"checkpoints": [{"path": ..., "epoch": ..., "step": ..., "metrics": {...}}], "best": "path"}
"""

from __future__ import annotations

import copy
import fnmatch
import json
import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from foveal.errors import HandoffError
from foveal.jobs.model import Job, JobStatus

if TYPE_CHECKING:  # keep foveal.jobs free of the networks package at import time
    from foveal.networks.registry import Network

logger = logging.getLogger(__name__)

_EPOCH_RE = re.compile(r"_epoch_(\d+)(?:_step_(\d+))?")
_FULL_CHECKPOINT_GLOB = "model_epoch_*.pth"
# Rules that read the parent's checkpoints: the parent must be a train job.
_CHECKPOINT_RULES = ("parent_model", "resume_model", "ptm_if_no_resume_model")
# resume_model first: ptm_if_no_resume_model depends on its outcome.
_RULE_ORDER = {"resume_model": 0}


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file with the epoch and step parsed from its name (-1 where absent)."""

    path: Path
    epoch: int = -1
    step: int = -1

    @classmethod
    def from_path(cls, path: Path) -> Checkpoint:
        match = _EPOCH_RE.search(path.name)
        if not match:
            return cls(path)
        return cls(path, int(match.group(1)), int(match.group(2)) if match.group(2) else -1)

    @property
    def order(self) -> tuple[int, int, float]:
        mtime = self.path.stat().st_mtime if self.path.exists() else 0.0
        return (self.epoch, self.step, mtime)


def parse_selection(selection: str | int) -> str | int:
    """``'best'``, ``'latest'`` or an epoch number from ``'best' | 'latest' | 'epoch:N' | N``."""
    if isinstance(selection, bool):
        raise HandoffError(f"invalid checkpoint selection {selection!r}; use best, latest or epoch:N")
    if isinstance(selection, int):
        return selection
    text = str(selection).strip().lower()
    if text in ("best", "latest"):
        return text
    number = text.removeprefix("epoch:").removeprefix("epoch=")
    if number.isdigit():
        return int(number)
    raise HandoffError(f"invalid checkpoint selection {selection!r}; use best, latest or epoch:N")


def find_checkpoints(results_dir: Path, pattern: str) -> list[Checkpoint]:
    """Files matching ``pattern`` in ``results_dir`` (or, if none there, one folder down), oldest first."""
    paths = [p for p in results_dir.glob(pattern) if p.is_file()]
    if not paths:
        paths = [p for p in results_dir.glob(f"*/{pattern}") if p.is_file()]
    return sorted((Checkpoint.from_path(p) for p in paths), key=lambda c: c.order)


def _recorded_best(parent: Job, results_dir: Path) -> Path | None:
    """The best checkpoint the parent recorded: its ``best_checkpoint`` artifact, else checkpoints.json."""
    best = parent.artifacts.get("best_checkpoint")
    index = results_dir / "checkpoints.json"
    if not best and index.is_file():
        try:
            best = json.loads(index.read_text(encoding="utf-8")).get("best")
        except (OSError, ValueError, AttributeError) as exc:
            logger.warning("ignoring unreadable %s: %s", index, exc)
    if not best:
        return None
    path = Path(best)
    return path if path.is_absolute() else results_dir / path


def _kind_glob(network: Network) -> tuple[str, str]:
    if not network.checkpoint_globs:
        return "model", _FULL_CHECKPOINT_GLOB
    kind = next(iter(network.checkpoint_globs))
    return kind, network.checkpoint_globs[kind]


def _no_checkpoint_error(network: Network, parent: Job, pattern: str, results_dir: Path) -> HandoffError:
    if parent.network != network.name or parent.action != "train":
        hint = f"pick a {network.name} train job"
    else:
        hint = f"has it saved a checkpoint yet? (looked in {results_dir})"
    return HandoffError(f"job {parent.label} has no {pattern} checkpoint; {hint}")


def select_checkpoint(network: Network, parent: Job, selection: str | int = "best") -> Path:
    """The parent checkpoint of ``network``'s first checkpoint kind: best, latest or epoch N.

    ``best`` is the parent's recorded best (a file of another kind recorded as best maps to the
    file of this kind with the same epoch and step); without a usable record it is ``latest``.
    """
    choice = parse_selection(selection)
    results_dir = _parent_results_dir(parent)
    _, pattern = _kind_glob(network)
    found = find_checkpoints(results_dir, pattern)
    if not found:
        raise _no_checkpoint_error(network, parent, pattern, results_dir)
    if isinstance(choice, int):
        same_epoch = [c for c in found if c.epoch == choice]
        if not same_epoch:
            epochs = ", ".join(str(e) for e in sorted({c.epoch for c in found if c.epoch >= 0})) or "none"
            raise HandoffError(
                f"job {parent.id} has no {pattern} checkpoint for epoch {choice}; epochs available: {epochs}"
            )
        return same_epoch[-1].path
    if choice == "best":
        best = _recorded_best(parent, results_dir)
        if best is not None:
            if best.is_file() and fnmatch.fnmatch(best.name, pattern):
                return best
            ref = Checkpoint.from_path(best)
            twins = [c for c in found if (c.epoch, c.step) == (ref.epoch, ref.step) and c.epoch >= 0]
            if twins:
                return twins[-1].path
            logger.warning(
                "job %s: best checkpoint %s has no %s twin; using the latest", parent.id, best, pattern
            )
    return found[-1].path


def _parent_results_dir(parent: Job) -> Path:
    if not parent.results_dir:
        raise HandoffError(f"job {parent.label} has no results folder recorded")
    return Path(parent.results_dir)


def _require_done(parent: Job) -> None:
    if parent.status is JobStatus.DONE:
        return
    if parent.status in (JobStatus.PENDING, JobStatus.RUNNING):
        raise HandoffError(f"job {parent.id} is {parent.status.value}; wait for it or pick a finished job")
    raise HandoffError(f"job {parent.id} ended with {parent.status.value}; pick a Done job")


def _require_train(parent: Job, rule: str, key: str) -> None:
    if parent.action != "train":
        raise HandoffError(
            f"{key} ({rule}) needs a train job as parent, but job {parent.label} is a {parent.action} job"
        )


def _needs_parent(rule: str) -> bool:
    return rule not in ("create_onnx_file", "output_dir")


def _resolve_rule(
    rule: str,
    key: str,
    network: Network,
    parent: Job,
    job_results_dir: Path,
    selection: str | int,
    resumed: bool,
) -> Any | None:
    """The value of one rule, or None to leave the key alone."""
    if rule == "create_onnx_file":
        return str(job_results_dir / f"{network.name}.onnx")
    if rule == "output_dir":
        return str(job_results_dir)
    if rule == "resume_model":
        _require_train(parent, rule, key)
        pattern = network.checkpoint_globs.get("model", _FULL_CHECKPOINT_GLOB)
        found = find_checkpoints(_parent_results_dir(parent), pattern)
        return str(found[-1].path) if found else None  # an interrupted parent is fine here
    if rule == "ptm_if_no_resume_model" and resumed:
        return None
    _require_done(parent)
    if rule in ("parent_model", "ptm_if_no_resume_model"):
        _require_train(parent, rule, key)
        return str(select_checkpoint(network, parent, selection))
    if rule == "parent_model_folder":
        return str(_parent_results_dir(parent))
    if rule == "key":
        return parent.spec.get("encryption_key")
    if rule == "parent_onnx_file":
        onnx = parent.artifacts.get("onnx")
        if not onnx:
            raise HandoffError(f"job {parent.label} recorded no ONNX file; pick a {network.name} export job")
        return str(onnx)
    raise HandoffError(f"unknown handoff rule {rule!r} for {key}")


def resolve_handoff(
    network: Network,
    action: str,
    parent: Job | None,
    *,
    job_results_dir: str | Path,
    selection: str | int = "best",
    explicit_keys: Collection[str] = (),
) -> dict[str, Any]:
    """Dotted spec overrides for the handoff rules ``network`` declares for ``action``.

    Args:
        network: the network of the new job.
        action: the action of the new job.
        parent: the parent job; without one only ``create_onnx_file``/``output_dir`` are filled.
        job_results_dir: the new job's results folder.
        selection: which parent checkpoint ``parent_model`` picks: ``best``, ``latest``,
            ``epoch:N`` or ``N``.
        explicit_keys: keys the user set; their rules are skipped (no errors for them either),
            and an explicit ``resume_model`` key counts as "resumed" for ``ptm_if_no_resume_model``.

    Returns:
        ``{dotted key: value}``; apply with :func:`apply_handoff`.

    Raises:
        HandoffError: one line naming the parent and what to pick instead.
    """
    # Availability of the action is the runner's check (after validation, so a spec is
    # checked even for an action a network does not implement yet).
    rules: Mapping[str, str] = network.handoff.get(action, {})
    job_results_dir = Path(job_results_dir)
    explicit = set(explicit_keys)
    resumed = any(rule == "resume_model" and _is_explicit(key, explicit) for key, rule in rules.items())
    overrides: dict[str, Any] = {}
    for key, rule in sorted(rules.items(), key=lambda item: _RULE_ORDER.get(item[1], 1)):
        if _is_explicit(key, explicit) or (parent is None and _needs_parent(rule)):
            continue
        value = _resolve_rule(rule, key, network, parent, job_results_dir, selection, resumed)
        if value is None:
            continue
        overrides[key] = value
        resumed = resumed or rule == "resume_model"
    return overrides


def _is_explicit(key: str, explicit: set[str]) -> bool:
    """Whether the user set ``key`` itself or a section holding it."""
    parts = key.split(".")
    return any(".".join(parts[:i]) in explicit for i in range(1, len(parts) + 1))


def apply_handoff(
    spec: Mapping[str, Any], overrides: Mapping[str, Any], explicit_keys: Collection[str] = ()
) -> dict:
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
