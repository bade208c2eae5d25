"""Checkpoint contract: names, atomic writes, safe loading, discovery.

Files in a results dir:

- ``model_epoch_{EEE}_step_{SSSSS}.pth``: full training state (Lightning's checkpoint dict:
  weights, optimizers, schedulers, loops) used to resume. ``EEE`` is the 1-based epoch the
  checkpoint was taken in (at an epoch end: the epoch just finished), ``SSSSS`` the global
  (optimizer) step.
- ``<network>_latest.pth``: relative symlink (a copy where symlinks are unsupported) to the
  newest full checkpoint.
- backbone-only handoff files, e.g. ``student_epoch_003.pth`` (:func:`save_weights_only`).

Every file carries ``network``, ``config`` (plain dict of the resolved spec),
``foveal_version``, ``kind`` (``"full"`` or the weights kind, e.g. ``"student"``), ``epoch``
and ``global_step``, so export and evaluate never need the spec.

Writes go to a temporary file in the same folder, are fsync'd, then ``os.replace``'d over the
final name: a crash (even SIGKILL) never leaves a partial file under a final name. Under an
encryption key (:mod:`foveal.secrets`) the bytes are encrypted before they reach the disk, and
loads decrypt them in memory. Loads use
``torch.load(weights_only=True)``, so a file from an untrusted source cannot run code; to keep
our own files loadable that way, :func:`to_weights_only_safe` turns dataclasses, paths, numpy
values, enums and the like into plain containers before saving.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import io
import logging
import os
import pickle
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from foveal._version import __version__
from foveal.engine.checkpoint_index import FULL_KIND
from foveal.errors import CheckpointError
from foveal.secrets import active_key, encrypt_bytes, is_encrypted, read_model_bytes

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^model_epoch_(\d+)_step_(\d+)\.pth$")
_TMP_PREFIX = ".tmp-"


# --------------------------------------------------------------------------- names


def checkpoint_filename(epoch: int, step: int) -> str:
    """Name of a full training checkpoint, e.g. ``model_epoch_002_step_00040.pth``."""
    return f"model_epoch_{int(epoch):03d}_step_{int(step):05d}.pth"


def weights_filename(kind: str, epoch: int, step: int) -> str:
    """Name of a weights-only handoff file beside the full checkpoint of the same step, e.g.
    ``student_epoch_003_step_00120.pth``."""
    return f"{kind}_epoch_{int(epoch):03d}_step_{int(step):05d}.pth"


def latest_link_name(network: str) -> str:
    """Name of the link to the newest full checkpoint, e.g. ``classification_latest.pth``."""
    return f"{network}_latest.pth"


def parse_checkpoint_filename(name: str) -> tuple[int, int] | None:
    """``(epoch, step)`` from a full checkpoint's file name, or ``None`` if it is not one."""
    match = CHECKPOINT_RE.match(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


def list_checkpoints(results_dir: str | os.PathLike[str]) -> list[Path]:
    """Full checkpoints directly in ``results_dir``, oldest first (by epoch, then step)."""
    folder = Path(results_dir)
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        parsed = parse_checkpoint_filename(path.name)
        if parsed is not None and path.is_file() and not path.is_symlink():
            found.append((parsed, path))
    return [path for _, path in sorted(found)]


def find_latest_checkpoint(results_dir: str | os.PathLike[str]) -> Path | None:
    """Newest full checkpoint in ``results_dir`` (by epoch/step in its name), or ``None``.

    Temporary files from an interrupted save never match the name pattern, so they are ignored.
    """
    checkpoints = list_checkpoints(results_dir)
    return checkpoints[-1] if checkpoints else None


# --------------------------------------------------------------------------- plain data


def to_weights_only_safe(obj: Any, _path: str = "checkpoint") -> Any:
    """Return a copy of ``obj`` that ``torch.load(weights_only=True)`` can read on torch >= 2.4.

    Tensors, primitives, lists, tuples, dicts and OrderedDicts pass through; dataclasses become
    dicts, paths/enums/dates/devices become strings or values, numpy scalars become Python
    numbers and numpy arrays tensors, sets become lists. Anything else is stored as its
    ``repr`` with a warning (it would otherwise make the file unloadable).
    """
    if obj is None or type(obj) in (bool, int, float, str, bytes, torch.Size) or isinstance(obj, torch.dtype):
        return obj
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, enum.Enum):
        return to_weights_only_safe(obj.value, _path)
    numpy_value = _numpy_to_torch(obj)
    if numpy_value is not None:
        return numpy_value
    for base in (bool, int, float, str, bytes):  # subclasses would pickle as their own class
        if isinstance(obj, base):
            return base(obj)  # type: ignore[arg-type]
    if isinstance(obj, (os.PathLike, torch.device, _dt.date, _dt.time)):
        return obj.isoformat() if isinstance(obj, (_dt.date, _dt.time)) else str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, to_weights_only_safe(v, f"{_path}.{k}")) for k, v in obj.items())
    if _is_omegaconf(obj):
        return to_weights_only_safe(_omegaconf_to_container(obj), _path)
    if isinstance(obj, Mapping):
        return {
            to_weights_only_safe(k, _path): to_weights_only_safe(v, f"{_path}.{k}") for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        converted = [to_weights_only_safe(v, f"{_path}[{i}]") for i, v in enumerate(obj)]
        return converted if isinstance(obj, list) else tuple(converted)
    if isinstance(obj, (set, frozenset)):
        return [to_weights_only_safe(v, _path) for v in sorted(obj, key=repr)]
    if isinstance(obj, bytearray):
        return bytes(obj)
    logger.warning("%s: %s is not plain data; storing its repr in the checkpoint", _path, type(obj).__name__)
    return repr(obj)


def _is_omegaconf(obj: Any) -> bool:
    return type(obj).__module__.startswith("omegaconf")


def _omegaconf_to_container(obj: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(obj, resolve=True)


def _numpy_to_torch(obj: Any) -> Any:
    if type(obj).__module__ != "numpy":
        return None
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj)) if obj.dtype != object else obj.tolist()
    return None


def to_plain_config(config: Any) -> dict[str, Any]:
    """The resolved spec as a plain dict (dataclass, mapping or OmegaConf), safe to embed."""
    if config is None:
        return {}
    plain = to_weights_only_safe(config, "config")
    if not isinstance(plain, dict):
        raise TypeError(f"config must be a mapping or dataclass, got {type(config).__name__}")
    return plain


# --------------------------------------------------------------------------- atomic writes


def _fsync_dir(folder: Path) -> None:
    """Persist a rename (POSIX); silently skipped where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Any], None]) -> Path:
    """Call ``write(file_object)`` on a temp file next to ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def save_checkpoint_atomic(obj: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """``torch.save`` a checkpoint dict atomically, converted to weights_only-loadable data, and
    encrypted when an encryption key is active (:mod:`foveal.secrets`)."""
    safe = to_weights_only_safe(dict(obj))
    key = active_key()
    if key is None:
        return atomic_write(path, lambda handle: torch.save(safe, handle))
    buffer = io.BytesIO()
    torch.save(safe, buffer)
    sealed = encrypt_bytes(buffer.getvalue(), key)
    return atomic_write(path, lambda handle: handle.write(sealed))


def update_latest_link(target: str | os.PathLike[str], link: str | os.PathLike[str]) -> Path:
    """Point ``link`` at ``target`` (same folder): a relative symlink, else an atomic copy."""
    target, link = Path(target), Path(link)
    tmp_link = link.parent / f"{_TMP_PREFIX}{link.name}.{os.getpid()}"
    try:
        if tmp_link.is_symlink() or tmp_link.exists():
            tmp_link.unlink()
        os.symlink(os.path.relpath(target, link.parent), tmp_link)
        os.replace(tmp_link, link)
    except (OSError, NotImplementedError) as exc:
        logger.debug("symlink unsupported (%s); copying %s to %s", exc, target.name, link.name)
        if tmp_link.is_symlink():
            tmp_link.unlink()
        if link.is_symlink():
            link.unlink()
        with open(target, "rb") as source:
            atomic_write(link, lambda handle: shutil.copyfileobj(source, handle, 1 << 20))
    return link


def save_weights_only(
    state_dict: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    network: str,
    config: Any,
    kind: str,
    epoch: int | None = None,
    step: int | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a weights-only handoff file (e.g. nvdinov2's ``student_epoch_003_step_00120.pth``) atomically.

    Args:
        state_dict: the module's weights.
        path: destination file (see :func:`weights_filename`).
        network: network name, e.g. ``"nvdinov2"``.
        config: the resolved spec (dataclass or dict).
        kind: what the weights are, e.g. ``"student"``, ``"teacher"``, ``"backbone"``.
        epoch: 1-based epoch the weights come from; step: global step.
        extra: more plain fields to store (e.g. ``{"arch": "vit_s"}``).
    """
    if kind == FULL_KIND:
        raise ValueError("kind 'full' is reserved for full training checkpoints")
    obj = {
        "network": network,
        "config": to_plain_config(config),
        "foveal_version": __version__,
        "kind": kind,
        "epoch": epoch,
        "global_step": step,
        **dict(extra or {}),
        "state_dict": OrderedDict((k, v.detach().cpu()) for k, v in state_dict.items()),
    }
    return save_checkpoint_atomic(obj, path)


# --------------------------------------------------------------------------- loading


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def load_checkpoint(
    path: str | os.PathLike[str],
    map_location: Any = "cpu",
    *,
    network: str | None = None,
    kind: str | None = None,
    require_foveal: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and check what it is.

    Args:
        path: the file (a ``*_latest.pth`` link is followed).
        map_location: passed to ``torch.load``.
        network: expected network name; a different one is an error.
        kind: expected kind (``"full"`` to resume, or e.g. ``"student"``).
        require_foveal: reject files without Foveal's ``network`` key (set False to read
            foreign weights, e.g. a pretrained model file).

    Raises:
        CheckpointError: one line naming the file and what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    source: Any = path
    if is_encrypted(path):  # decrypted in memory only
        source = io.BytesIO(read_model_bytes(path))
    try:
        obj = torch.load(source, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError(
                f"{path} contains pickled Python objects that weights_only loading refuses "
                f"(it could run code); re-save it as plain tensors ({_first_line(exc)})"
            ) from None
        raise CheckpointError(f"{path} is corrupt or truncated: {_first_line(exc)}") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated: {_first_line(exc)}") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} is not a checkpoint (holds a {type(obj).__name__}, expected a dict)")
    if not require_foveal:
        return obj
    found_network = obj.get("network")
    if not isinstance(found_network, str):
        raise CheckpointError(f"{path} is not a Foveal checkpoint (it has no 'network' key)")
    if network is not None and found_network != network:
        raise CheckpointError(f"{path} is a {found_network} checkpoint; this is {network}")
    found_kind = obj.get("kind", FULL_KIND)
    if kind is not None and found_kind != kind:
        if kind == FULL_KIND:
            raise CheckpointError(
                f"{path} holds {found_kind} weights only; resuming needs a full training checkpoint "
                f"(model_epoch_EEE_step_SSSSS.pth or the *_latest.pth link beside it)"
            )
        raise CheckpointError(f"{path} is a {found_kind} checkpoint; expected {kind} weights")
    return obj
