"""TAO-Deploy's engine-builder options: per-layer precision, the timing cache and INT8 calibration.

* ``tensorrt.layers_precision``: ``"<layer name>:<precision>"`` entries, split at the last colon
  (layer names may hold colons); ``*`` as the name sets every other layer. Precisions: fp32, fp16,
  int8, int32. Applied when the engine is not fp32, with TensorRT preferring (not obeying) them.
* ``gen_trt_engine.timing_cache``: read when the file exists, written back after the build, so
  a second build of the same network on the same GPU skips kernel timing.
* ``tensorrt.calibration``: an entropy calibrator that feeds ``cal_batches`` batches of
  ``cal_batch_size`` images from ``cal_image_dir`` (preprocessed as the model was trained) and
  keeps the scales in ``cal_cache_file``; a cache that exists is used without any image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foveal.errors import EngineBuildError

logger = logging.getLogger(__name__)

LAYER_PRECISIONS = ("fp32", "fp16", "int8", "int32")


def parse_layers_precision(entries: Sequence[str]) -> dict[str, str]:
    """``["conv1:fp32", "*:fp16"]`` -> ``{"conv1": "fp32", "*": "fp16"}``.

    Raises:
        ValueError: an entry without a colon or with an unknown precision (one line).
    """
    out: dict[str, str] = {}
    for entry in entries:
        name, sep, precision = str(entry).rpartition(":")
        precision = precision.strip().lower()
        if not sep or not name:
            raise ValueError(f"layers_precision entry {entry!r} is not '<layer name>:<precision>'")
        if precision not in LAYER_PRECISIONS:
            raise ValueError(
                f"layers_precision entry {entry!r}: precision must be one of {', '.join(LAYER_PRECISIONS)}"
            )
        out[name] = precision
    return out


def apply_layers_precision(trt: Any, network: Any, config: Any, precisions: dict[str, str]) -> int:
    """Set the precision of the named layers (``*``: all others); returns how many were set."""
    if not precisions:
        return 0
    types = {"fp32": trt.float32, "fp16": trt.float16, "int8": trt.int8, "int32": trt.int32}
    default = precisions.get("*")
    named = {k: v for k, v in precisions.items() if k != "*"}
    found: set[str] = set()
    count = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        precision = named.get(layer.name, default)
        if layer.name in named:
            found.add(layer.name)
        if precision is None:
            continue
        layer.precision = types[precision]
        count += 1
    missing = sorted(set(named) - found)
    if missing:
        raise EngineBuildError(
            f"tensorrt.layers_precision names layers the network does not have: {', '.join(missing[:5])}"
        )
    flag = getattr(trt.BuilderFlag, "PREFER_PRECISION_CONSTRAINTS", None) or trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS
    config.set_flag(flag)
    return count


class TimingCache:
    """Load a timing cache into a builder config before the build and save it after."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path).expanduser() if path else None

    def attach(self, config: Any) -> None:
        if self.path is None:
            return
        data = self.path.read_bytes() if self.path.is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
        logger.info("timing cache %s (%s)", self.path, "read" if data else "new")

    def save(self, config: Any) -> None:
        if self.path is None:
            return
        cache = config.get_timing_cache()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_bytes(bytes(memoryview(cache.serialize())))


@dataclass(frozen=True)
class CalibrationSettings:
    """``tensorrt.calibration``: where the images and the cache are, how many to use."""

    image_dirs: tuple[str, ...]
    cache_file: str
    batch_size: int = 1
    batches: int = 1


def calibration_images(settings: CalibrationSettings) -> list[Path]:
    """The first ``batch_size * batches`` images of the folders (sorted, recursive).

    Raises:
        EngineBuildError: a folder is missing or the folders hold too few images.
    """
    from foveal.data.images import scan_images

    files: list[Path] = []
    for folder in settings.image_dirs:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise EngineBuildError(f"tensorrt.calibration.cal_image_dir: {path} is not a folder")
        files += scan_images(path, recursive=True)
    needed = settings.batch_size * settings.batches
    if len(files) < needed:
        raise EngineBuildError(
            f"tensorrt.calibration: {len(files)} images in {', '.join(settings.image_dirs)} but cal_batches x "
            f"cal_batch_size = {needed}; lower them or add images"
        )
    return sorted(files)[:needed]


def make_calibrator(
    trt: Any, settings: CalibrationSettings, preprocess: Callable[[Path], Any] | None
) -> Any:
    """A ``tensorrt.IInt8EntropyCalibrator2`` feeding preprocessed images from GPU memory.

    With an existing ``cache_file`` no image is read (``preprocess`` may be None then).
    """
    import torch

    cache = Path(settings.cache_file).expanduser()
    files = [] if cache.is_file() else calibration_images(settings)
    if files and preprocess is None:
        raise EngineBuildError("INT8 calibration needs the model's preprocessing to read images")

    device = "cuda" if torch.cuda.is_available() else "cpu"  # TensorRT reads GPU memory; cpu: tests

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.index = 0
            self.device_batch: torch.Tensor | None = None

        def get_batch_size(self) -> int:
            return settings.batch_size

        def get_batch(self, names: Sequence[str]) -> list[int] | None:
            if self.index >= len(files):
                return None
            chunk = files[self.index : self.index + settings.batch_size]
            self.index += settings.batch_size
            assert preprocess is not None
            batch = torch.stack([preprocess(f) for f in chunk]).float().contiguous()
            self.device_batch = batch.to(device)  # kept alive until the next call
            return [int(self.device_batch.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return cache.read_bytes() if cache.is_file() else None

        def write_calibration_cache(self, data: Any) -> None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_bytes(bytes(memoryview(data)))
            logger.info("INT8 calibration cache written to %s", cache)

    logger.info(
        "INT8 calibration: %s",
        f"cache {cache}" if not files else f"{len(files)} images in {settings.batches} batches, cache -> {cache}",
    )
    return _Calibrator()
