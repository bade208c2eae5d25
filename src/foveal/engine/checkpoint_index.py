"""The checkpoint index of a results folder (``checkpoints.json``): written and read by this code only.

Every save of :class:`~foveal.engine.callbacks.FovealCheckpoint` adds an entry: the epoch, the
global step, the metrics logged so far and the files of that step, by kind (``"full"``: the
``model_epoch_*`` training state; weights-only kinds such as nvdinov2's ``"student"`` and
``"teacher"``). The index names the best entry by the monitored metric and the latest one.

Readers (handoff of a parent job's checkpoint, a train job's artifacts) go through
:meth:`CheckpointIndex.read` and :meth:`CheckpointIndex.select`, never through the JSON keys.
A folder without an index (written by another tool, or before the index existed) is indexed
from its file names, without metrics (so ``best`` falls back to ``latest``, with a warning).

Format (``format`` 2)::

    {"format": 2, "network": "classification", "monitor": "val_top1", "mode": "max",
     "latest_checkpoint": "model_epoch_004_step_00040.pth",
     "best_checkpoint": {"file": ..., "epoch": 2, "step": 20, "metric": "val_top1", "value": 0.9},
     "checkpoints": [{"epoch": 1, "step": 10, "file": ..., "files": {"full": ..., "student": ...},
                      "metrics": {...}, "date": "2026-12-03", "time": "12:00:00"}, ...]}
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foveal.errors import CheckpointError

logger = logging.getLogger(__name__)

INDEX_FILENAME = "checkpoints.json"
INDEX_FORMAT = 2
FULL_KIND = "full"
_FILE_RE = re.compile(r"^(?P<kind>[a-z][a-z0-9]*)_epoch_(?P<epoch>\d+)(?:_step_(?P<step>\d+))?\.pth$")

Selection = str | int  # "best" | "latest" | epoch number


def parse_selection(selection: Selection) -> Selection:
    """``'best'``, ``'latest'`` or an epoch number from ``'best' | 'latest' | 'epoch:N' | N``.

    Raises:
        ValueError: anything else.
    """
    if isinstance(selection, bool):
        raise ValueError(f"invalid checkpoint selection {selection!r}; use best, latest or epoch:N")
    if isinstance(selection, int):
        return selection
    text = str(selection).strip().lower()
    if text in ("best", "latest"):
        return text
    number = text.removeprefix("epoch:").removeprefix("epoch=")
    if number.isdigit():
        return int(number)
    raise ValueError(f"invalid checkpoint selection {selection!r}; use best, latest or epoch:N")


@dataclass
class IndexEntry:
    """One save: its epoch (1-based), global step, files by kind and metrics at that moment."""

    epoch: int
    step: int
    files: dict[str, str] = field(default_factory=dict)  # kind -> file name in the folder
    metrics: dict[str, float | str] = field(default_factory=dict)
    date: str = ""
    time: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "file": self.files.get(FULL_KIND),
            "files": dict(self.files),
            "metrics": dict(self.metrics),
            "date": self.date,
            "time": self.time,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> IndexEntry | None:
        files = dict(data.get("files") or {})
        if not files and data.get("file"):
            files = {FULL_KIND: str(data["file"])}
        if not files:
            return None
        try:
            epoch, step = int(data.get("epoch", -1)), int(data.get("step", -1))
        except (TypeError, ValueError):
            return None
        metrics = {k: v for k, v in dict(data.get("metrics") or {}).items() if isinstance(v, (int, float, str))}
        return cls(epoch, step, {str(k): str(v) for k, v in files.items()}, metrics, str(data.get("date", "")), str(data.get("time", "")))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


@dataclass
class CheckpointIndex:
    """The saves of one results folder, oldest first, and how the best one is chosen."""

    folder: Path
    network: str | None = None
    monitor: str | None = None
    mode: str = "min"
    entries: list[IndexEntry] = field(default_factory=list)
    from_file_names: bool = False  # True when no checkpoints.json was there

    # ----------------------------------------------------------------------------- reading

    @classmethod
    def read(cls, folder: str | os.PathLike[str], network: str | None = None) -> CheckpointIndex:
        """The index of ``folder``: its ``checkpoints.json``, else one built from the file names.

        Args:
            network: when given, an index written for another network is ignored (a fresh start).
        """
        folder = Path(folder)
        path = folder / INDEX_FILENAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls.scan(folder, network)
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("ignoring unreadable %s (%s); indexing the checkpoint files instead", path, exc)
            return cls.scan(folder, network)
        if not isinstance(data, dict) or (network is not None and data.get("network") != network):
            return cls(folder, network)
        entries = [e for e in (IndexEntry.from_json(d) for d in data.get("checkpoints", []) if isinstance(d, dict)) if e]
        mode = str(data.get("mode")) if data.get("mode") in ("min", "max") else "min"
        index = cls(folder, data.get("network"), data.get("monitor"), mode, entries)
        index.entries.sort(key=lambda e: (e.epoch, e.step))
        return index

    @classmethod
    def scan(cls, folder: str | os.PathLike[str], network: str | None = None) -> CheckpointIndex:
        """An index built from the checkpoint file names of ``folder`` (no metrics)."""
        folder = Path(folder)
        by_step: dict[tuple[int, int], IndexEntry] = {}
        if folder.is_dir():
            for path in folder.iterdir():
                match = _FILE_RE.match(path.name)
                if match is None or not path.is_file() or path.is_symlink():
                    continue
                epoch, step = int(match["epoch"]), int(match["step"]) if match["step"] else -1
                kind = FULL_KIND if match["kind"] == "model" else match["kind"]
                entry = by_step.setdefault((epoch, step), IndexEntry(epoch, step))
                entry.files[kind] = path.name
        entries = [by_step[k] for k in sorted(by_step)]
        return cls(folder, network, None, "min", entries, from_file_names=True)

    # ----------------------------------------------------------------------------- choosing

    def _present(self, kind: str) -> list[IndexEntry]:
        return [e for e in self.entries if kind in e.files and (self.folder / e.files[kind]).is_file()]

    def kinds(self) -> list[str]:
        """The kinds of file present in the folder, full first."""
        found = {k for e in self.entries for k in e.files}
        return sorted(found, key=lambda k: (k != FULL_KIND, k))

    def latest(self, kind: str = FULL_KIND) -> IndexEntry | None:
        present = self._present(kind)
        return present[-1] if present else None

    def best(self, kind: str = FULL_KIND) -> IndexEntry | None:
        """The entry with the best monitored metric among those whose ``kind`` file exists."""
        if self.monitor is None:
            return None
        scored = [(v, e) for e in self._present(kind) if (v := _number(e.metrics.get(self.monitor))) is not None]
        if not scored:
            return None
        pick = min if self.mode == "min" else max
        return pick(scored, key=lambda pair: pair[0])[1]

    def at_epoch(self, epoch: int, kind: str = FULL_KIND) -> IndexEntry | None:
        same = [e for e in self._present(kind) if e.epoch == epoch]
        return same[-1] if same else None

    def select(self, selection: Selection = "best", kind: str = FULL_KIND) -> Path:
        """The ``kind`` file of the best / latest / epoch-N save.

        ``best`` without a monitored metric (or without metrics) is ``latest``, with a warning.

        Raises:
            CheckpointError: nothing of ``kind`` in the folder, or no save at that epoch.
        """
        try:
            choice = parse_selection(selection)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
        if not self._present(kind):
            raise CheckpointError(f"{self.folder} holds no {describe_kind(kind)} checkpoint")
        if isinstance(choice, int):
            entry = self.at_epoch(choice, kind)
            if entry is None:
                epochs = ", ".join(str(e.epoch) for e in self._present(kind)) or "none"
                raise CheckpointError(
                    f"{self.folder} has no {describe_kind(kind)} checkpoint of epoch {choice}; epochs: {epochs}"
                )
        elif choice == "best":
            entry = self.best(kind)
            if entry is None:
                if self.monitor is None:  # by design (e.g. self-supervised runs): best is the latest
                    logger.info("%s: its run monitored no metric; best is the latest save", self.folder)
                else:
                    logger.warning(
                        "%s: no save recorded %s; using the latest checkpoint", self.folder, self.monitor
                    )
                entry = self.latest(kind)
        else:
            entry = self.latest(kind)
        assert entry is not None  # _present(kind) is not empty
        return self.folder / entry.files[kind]

    # ----------------------------------------------------------------------------- writing

    def record(self, entry: IndexEntry) -> None:
        """Add (or replace, for the same epoch and step) a save."""
        self.entries = [e for e in self.entries if (e.epoch, e.step) != (entry.epoch, entry.step)]
        self.entries.append(entry)
        self.entries.sort(key=lambda e: (e.epoch, e.step))

    def to_json(self) -> dict[str, Any]:
        best, latest = self.best(), self.latest()
        return {
            "format": INDEX_FORMAT,
            "network": self.network,
            "monitor": self.monitor,
            "mode": self.mode,
            "latest_checkpoint": latest.files[FULL_KIND] if latest else None,
            "best_checkpoint": None
            if best is None or self.monitor is None
            else {
                "file": best.files[FULL_KIND],
                "epoch": best.epoch,
                "step": best.step,
                "metric": self.monitor,
                "value": best.metrics[self.monitor],
            },
            "checkpoints": [e.to_json() for e in self.entries],
        }

    def write(self) -> Path:
        """Write ``checkpoints.json`` atomically."""
        from foveal.engine.checkpoint import atomic_write

        data = json.dumps(self.to_json(), indent=2).encode("utf-8")
        return atomic_write(self.folder / INDEX_FILENAME, lambda handle: handle.write(data))

    # ----------------------------------------------------------------------------- artifacts

    def artifacts(self) -> dict[str, str]:
        """A finished train job's checkpoint artifacts: ``checkpoint`` (the latest full one),
        ``best_checkpoint`` (when a metric was monitored) and the latest file of each other kind."""
        out: dict[str, str] = {}
        latest = self.latest()
        if latest is not None:
            out["checkpoint"] = str(self.folder / latest.files[FULL_KIND])
        best = self.best()
        if best is not None:
            out["best_checkpoint"] = str(self.folder / best.files[FULL_KIND])
        for kind in self.kinds():
            entry = self.latest(kind)
            if kind != FULL_KIND and entry is not None:
                out[kind] = str(self.folder / entry.files[kind])
        return out


def describe_kind(kind: str) -> str:
    """``full training (model_epoch_*.pth)`` / ``student (student_epoch_*.pth)``."""
    return "full training (model_epoch_*.pth)" if kind == FULL_KIND else f"{kind} ({kind}_epoch_*.pth)"


def checkpoint_artifacts(results_dir: str | os.PathLike[str]) -> dict[str, str]:
    """:meth:`CheckpointIndex.artifacts` of ``results_dir``."""
    return CheckpointIndex.read(results_dir).artifacts()


def select_checkpoint(
    results_dir: str | os.PathLike[str], selection: Selection = "best", kind: str = FULL_KIND
) -> Path:
    """:meth:`CheckpointIndex.select` of ``results_dir``."""
    return CheckpointIndex.read(results_dir).select(selection, kind)

