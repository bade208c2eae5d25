"""Foveal: train, tune, evaluate and export vision foundation models from typed spec files.

The Python API (stable; see :mod:`foveal.api`)::

    import foveal

    job = foveal.run("mae", "train", overrides={"dataset.train_data_sources": "data/images_train"})
    foveal.check("mae", "train", overrides={...})      # validate without running
    handle = foveal.start(...)                         # non-blocking: watch, wait, cancel
    foveal.jobs.list(); foveal.jobs.get(job.id); foveal.jobs.logs(job.id); foveal.jobs.cancel(job.id)
    foveal.models(); foveal.schema("mae", "train"); foveal.automl("mae", max_trials=4)
    foveal.workflows.normal_train("mae", "data/images_train.tar.gz", "data/labeled_val.tar.gz")
    foveal.port_hf("path/to/hf-folder", name="mymodel")

Names are imported on first use, so ``import foveal`` stays light (no torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from foveal._version import __version__

_API = ("JobHandle", "SpecCheck", "automl", "check", "models", "port_hf", "run", "schema", "start", "template")
_SUBPACKAGES = ("errors", "jobs", "workflows")

__all__ = [
    "JobHandle",
    "SpecCheck",
    "__version__",
    "automl",
    "check",
    "errors",
    "jobs",
    "models",
    "port_hf",
    "run",
    "schema",
    "start",
    "template",
    "workflows",
]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module("foveal.api"), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"foveal.{name}")
    else:
        raise AttributeError(f"module 'foveal' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:
    from foveal import errors, jobs, workflows
    from foveal.api import (
        JobHandle,
        SpecCheck,
        automl,
        check,
        models,
        port_hf,
        run,
        schema,
        start,
        template,
    )
