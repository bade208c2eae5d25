"""foveal.workflows: multi-stage runs built from jobs: the demo and normal-train.

``foveal.workflows.normal_train(...)`` is part of the Python API (:mod:`foveal.api`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["normal_train"]


def normal_train(
    model: str,
    train_dataset_uri: str | Path,
    eval_dataset_uri: str | Path | None = None,
    *,
    export: bool = False,
    automl_policy: str = "auto",
    algorithm: str = "bayesian",
    max_trials: int = 4,
    max_concurrent: int | None = None,
    base_checkpoint: str | Path | None = None,
    overrides: Iterable[str] = (),
    platform: str = "local",
    image: str | None = None,
    workspace: Any = None,
    progress: bool = False,
    emit: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train (through AutoML where the model allows it) -> evaluate -> export, as chained jobs
    (``foveal workflow normal-train``); returns the summary (stages, jobs, KPIs, artifacts).

    Nothing is asked: a remote platform needs ``image`` (the confirmation the CLI asks for).

    Args:
        model: a network name (``foveal.models()``).
        train_dataset_uri: the training dataset (folder, archive or URI); it fills each
            action's training dataset keys.
        eval_dataset_uri: the evaluation dataset, likewise (optional).
        export: also export the trained model to ONNX.
        automl_policy: ``auto`` (the model's metadata decides), ``on`` or ``off``.
        base_checkpoint: a checkpoint to start training from.
        overrides: ``key=value`` spec overrides for every stage.
        progress: print the workflow's lines to stderr (else ``emit`` receives them, if given).
    """
    import sys

    from foveal.jobs.workspace import Workspace
    from foveal.workflows.normal import NormalTrainRequest, run_normal_train

    def say(line: str) -> None:
        if emit is not None:
            emit(line)
        if progress:
            print(line, file=sys.stderr)

    request = NormalTrainRequest(
        model=model,
        train_dataset_uri=str(train_dataset_uri),
        eval_dataset_uri=str(eval_dataset_uri) if eval_dataset_uri else None,
        platform=platform,
        image=image,
        yes=image is not None,
        automl_policy=automl_policy,
        algorithm=algorithm,
        max_trials=max_trials,
        max_concurrent=max_concurrent,
        base_checkpoint=str(base_checkpoint) if base_checkpoint else None,
        export=export,
        monitor=progress,
        overrides=list(overrides),
        emit=say,
    )
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    return run_normal_train(request, ws)
