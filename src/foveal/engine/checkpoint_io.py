"""Lightning CheckpointIO plugin: atomic, weights_only-safe saves and loads.

Lightning saves through ``strategy.checkpoint_io.save_checkpoint`` and, on resume, loads
through ``strategy.load_checkpoint`` → ``checkpoint_io.load_checkpoint`` (single device, DDP).
Installing this plugin makes both go through :mod:`foveal.engine.checkpoint`: saves are
tmp + fsync + rename with plain-data conversion, loads are always ``weights_only=True`` whatever
Lightning version asks (2.3–2.5 pass no flag, 2.6 may pass ``weights_only=False``).

:func:`foveal.engine.fit` also hands an already-validated checkpoint dict to the plugin
(:meth:`SafeCheckpointIO.preload`) so a resume reads the file once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import TorchCheckpointIO

from foveal.engine.checkpoint import load_checkpoint, save_checkpoint_atomic

# Lightning stores the *class* of OmegaConf hparams next to them; a class is not plain data,
# and once the hparams are converted to a dict the type no longer applies.
_HPARAMS_TYPE_KEYS = ("hparams_type", "datamodule_hparams_type")


class SafeCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` with atomic local writes and ``weights_only=True`` loads."""

    def __init__(self) -> None:
        super().__init__()
        self._preloaded: dict[str, dict[str, Any]] = {}

    def preload(self, path: str | os.PathLike[str], checkpoint: dict[str, Any]) -> None:
        """Serve ``checkpoint`` for the next load of ``path`` instead of reading the file again."""
        self._preloaded[os.path.realpath(path)] = checkpoint

    def clear_preloaded(self) -> None:
        """Drop checkpoints handed over by :meth:`preload` that Lightning did not ask for."""
        self._preloaded.clear()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if "://" in str(path) and not str(path).startswith("file://"):
            return super().save_checkpoint(checkpoint, path, storage_options)  # remote: fsspec's transaction
        if storage_options is not None:
            raise TypeError(f"storage_options are not supported by {type(self).__name__}")
        checkpoint = dict(checkpoint)
        for key in _HPARAMS_TYPE_KEYS:
            checkpoint.pop(key, None)
        save_checkpoint_atomic(checkpoint, Path(str(path).removeprefix("file://")))

    def load_checkpoint(
        self, path: Any, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        # `weights_only` from Lightning is ignored on purpose: we never unpickle arbitrary objects.
        preloaded = self._preloaded.pop(os.path.realpath(path), None)
        if preloaded is not None:
            return preloaded
        return load_checkpoint(
            path, map_location="cpu" if map_location is None else map_location, require_foveal=False
        )
