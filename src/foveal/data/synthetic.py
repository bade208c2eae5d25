"""Synthetic shape datasets for demos, smoke runs and tests (no download needed).

Each image shows one shape whose type is the class (circle, square, triangle, star, cross, ring,
ellipse, hexagon, pentagon, crescent, arrow, semicircle; the first `num_classes` are used).
Everything else varies per image: shape and background colours, position, size, rotation, a
background texture (solid, gradient, stripes, checker, smooth noise) and pixel noise. Raw pixels
therefore classify poorly while shape-aware features classify well, which is what a
self-supervised demo should show.

Layout written by `make_demo_dataset` under ``out_dir`` (the returned dict is keyed by these
names)::

    images_train/ images_val/ images_test/       flat folders of images: TAO's SSL layout
                                                 (nvdinov2 `images_dir`, mae data sources)
    labeled_train/<class>/ labeled_val/<class>/ labeled_test/<class>/
                                                 the same images in class folders (classification)
    images_train.tar.gz ... labeled_test.tar.gz  with ``archives=True``: each holds its folder,
                                                 e.g. ``images_train/img_000000.png``
    dataset.json                                 the arguments, classes, per-split class counts and
                                                 GENERATOR_VERSION (to tell a stale cached copy)

Image ``i`` of a split has the same name, ``img_{i:06d}.png``, in both layouts (the labeled copy
is a hard link where the filesystem allows). Splits of size 0 are not written.

Determinism: image ``i`` of split ``s`` is drawn from ``numpy.random.default_rng([seed, s, i])``,
so the bytes do not depend on the number of workers; labels are a seeded permutation of a
balanced list; PNG/JPEG settings are fixed; archives have sorted members, fixed mtimes and no
owners. The same seed gives byte-identical files with the same numpy, Pillow and zlib.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from foveal.errors import DatasetError

logger = logging.getLogger(__name__)

SHAPE_CLASSES = (
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "ring",
    "ellipse",
    "hexagon",
    "pentagon",
    "crescent",
    "arrow",
    "semicircle",
)
SPLITS = ("train", "val", "test")
#: Bumped whenever rendering changes, so a cached dataset can tell it is stale (see dataset.json).
GENERATOR_VERSION = 1

_ARCHIVE_MTIME = 1_704_067_200  # 2024-01-01: fixed so archives are byte-reproducible
_CHUNK = 500  # images per worker task
_PARALLEL_MIN = 2_000  # below this, starting worker processes costs more than it saves


def _regular(n: int, radius: float = 1.0, phase: float = 0.0) -> np.ndarray:
    angles = phase + 2 * math.pi * np.arange(n) / n
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _star() -> np.ndarray:
    points = _regular(10, phase=-math.pi / 2)
    points[1::2] *= 0.45
    return points


_CROSS = 0.3 * np.array(
    [
        (1, 3.3),
        (1, 1),
        (3.3, 1),
        (3.3, -1),
        (1, -1),
        (1, -3.3),
        (-1, -3.3),
        (-1, -1),
        (-3.3, -1),
        (-3.3, 1),
        (-1, 1),
        (-1, 3.3),
    ]
)
_ARROW = np.array([(-1, -0.25), (0.2, -0.25), (0.2, -0.6), (1, 0), (0.2, 0.6), (0.2, 0.25), (-1, 0.25)])
_HALF_DISC = np.concatenate([_regular(48, phase=0)[:25], [(0.0, 0.0)]]) - (0.0, 0.42)

# Unit-radius outlines per class: (fill, points); a fill of 0 cuts a hole (ring, crescent).
_OUTLINES: dict[str, list[tuple[int, np.ndarray]]] = {
    "circle": [(255, _regular(64))],
    "square": [(255, _regular(4, phase=math.pi / 4))],
    "triangle": [(255, _regular(3, phase=-math.pi / 2))],
    "star": [(255, _star())],
    "cross": [(255, _CROSS)],
    "ring": [(255, _regular(64)), (0, _regular(64, 0.55))],
    "ellipse": [(255, _regular(64))],  # squashed per image, see _shape_mask
    "hexagon": [(255, _regular(6))],
    "pentagon": [(255, _regular(5, phase=-math.pi / 2))],
    "crescent": [(255, _regular(64)), (0, _regular(64, 0.8) + (0.45, 0.0))],
    "arrow": [(255, _ARROW)],
    "semicircle": [(255, _HALF_DISC)],
}


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = ((np.arange(size) + 0.5) / size).astype(np.float32)
    return np.meshgrid(coords, coords, indexing="xy")


BACKGROUND_KINDS = ("solid", "gradient", "stripes", "checker", "noise")


def _background_colours_and_kind(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int]:
    """The first draws of every image: its two background colours and its texture kind."""
    c1, c2 = rng.random(3, dtype=np.float32), rng.random(3, dtype=np.float32)
    return c1, c2, int(rng.integers(len(BACKGROUND_KINDS)))


def background_kind(seed: int, split: str, index: int) -> int:
    """The background texture of image ``index`` of ``split`` (an index into BACKGROUND_KINDS).

    A nuisance label for benchmarks: every crop of an image shares it, whatever its class."""
    return _background_colours_and_kind(np.random.default_rng([seed, SPLITS.index(split), index]))[2]


def _background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A textured background (H, W, 3) in [0, 1] and its two colours."""
    x, y = _grid(size)
    c1, c2, kind = _background_colours_and_kind(rng)
    theta = rng.uniform(0, 2 * math.pi)
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    if kind == 0:  # solid
        t = np.zeros_like(x)
    elif kind == 1:  # linear gradient
        t = (u - u.min()) / max(np.ptp(u), 1e-6)
    elif kind == 2:  # stripes, soft or hard
        t = 0.5 + 0.5 * np.sin(2 * math.pi * rng.uniform(2, 8) * u + rng.uniform(0, 2 * math.pi))
        t = (t > 0.5).astype(np.float32) if rng.random() < 0.5 else t
    elif kind == 3:  # rotated checkerboard
        cells = rng.uniform(2, 8)
        t = (np.floor(u * cells) + np.floor(v * cells)) % 2
    else:  # smooth value noise
        k = int(rng.integers(3, 9))
        small = Image.fromarray((rng.random((k, k)) * 255).astype(np.uint8), mode="L")
        t = np.asarray(small.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32) / 255
    return c1 + (c2 - c1) * t[..., None], c1, c2


def _shape_mask(rng: np.random.Generator, shape: str, size: int) -> np.ndarray:
    """Anti-aliased coverage (H, W) in [0, 1]: drawn at up to 4x and box-filtered down."""
    ss = max(1, min(4, 256 // size))
    canvas = size * ss
    radius = rng.uniform(0.2, 0.36) * canvas
    cx, cy = rng.uniform(radius, canvas - radius, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    squash = np.array([1.0, rng.uniform(0.45, 0.6)]) if shape == "ellipse" else np.ones(2)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    for fill, outline in _OUTLINES[shape]:
        points = (outline * squash) @ rotation.T * radius + (cx, cy)
        draw.polygon([tuple(p) for p in points.tolist()], fill=fill)
    if ss > 1:
        mask = mask.resize((size, size), Image.Resampling.BOX)
    return np.asarray(mask, dtype=np.float32) / 255


def render_demo_image(seed: int, split: str, index: int, label: int, image_size: int = 64) -> Image.Image:
    """Draw image `index` of `split` showing class `label` (deterministic in all arguments)."""
    return render_annotated(seed, split, index, label, image_size)[0]


def render_annotated(
    seed: int, split: str, index: int, label: int, image_size: int = 64
) -> tuple[Image.Image, np.ndarray]:
    """The image of :func:`render_demo_image` and its shape's coverage (H, W) in [0, 1]."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    background, c1, c2 = _background(rng, image_size)
    color = rng.random(3, dtype=np.float32)
    for _ in range(16):  # keep the shape visible: far enough (L1) from both background colours
        if min(np.abs(color - c1).sum(), np.abs(color - c2).sum()) > 0.6:
            break
        color = rng.random(3, dtype=np.float32)
    coverage = _shape_mask(rng, SHAPE_CLASSES[label], image_size)[..., None]
    image = background + (color - background) * coverage
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(rng.uniform(0.0, 0.08))
    image = (image + noise) * 255 + 0.5
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), mode="RGB"), coverage[..., 0]


def split_labels(seed: int, split: str, count: int, num_classes: int) -> np.ndarray:
    """Balanced labels (class counts differ by at most one) in a seeded order."""
    rng = np.random.default_rng([seed, 1000 + SPLITS.index(split)])
    return rng.permutation(np.arange(count) % num_classes)


def _write_chunk(task: list) -> int:
    """Worker: render images [start, stop) of a split into both layouts."""
    out_dir, split, start, stop, labels, seed, size, fmt = task
    flat, labeled = Path(out_dir) / f"images_{split}", Path(out_dir) / f"labeled_{split}"
    for index, label in zip(range(start, stop), labels, strict=True):
        name = f"img_{index:06d}.{fmt}"
        image = render_demo_image(seed, split, index, int(label), size)
        if fmt == "png":
            image.save(flat / name, format="PNG", compress_level=6)
        else:
            image.save(flat / name, format="JPEG", quality=90, subsampling=0, optimize=False)
        link = labeled / SHAPE_CLASSES[label] / name
        try:
            os.link(flat / name, link)
        except OSError:  # filesystems without hard links
            shutil.copyfile(flat / name, link)
    return stop - start


def _write_tar_gz(task: list[str]) -> str:
    """Worker: archive a folder reproducibly (sorted members, fixed mtime, no owners, gzip mtime 0)."""
    folder, archive = Path(task[0]), Path(task[1])
    part = archive.with_name(f".{archive.name}.part")
    entries = sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).parts)  # stable across Pythons
    with (
        open(part, "wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in [folder, *entries]:
            info = tarfile.TarInfo(path.relative_to(folder.parent).as_posix())
            info.mtime, info.uid, info.gid, info.uname, info.gname = _ARCHIVE_MTIME, 0, 0, "", ""
            if path.is_dir():
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.mode, info.size = 0o644, path.stat().st_size
                with open(path, "rb") as f:
                    tar.addfile(info, f)
    os.replace(part, archive)
    return str(archive)


def make_demo_dataset(
    out_dir: str | Path,
    *,
    num_train: int = 1000,
    num_val: int = 200,
    num_test: int = 200,
    image_size: int = 64,
    num_classes: int = 8,
    seed: int = 0,
    archives: bool = True,
    image_format: str = "png",
    num_workers: int | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a synthetic shape dataset (layout in the module docstring).

    Args:
        out_dir: folder to write into; created if missing.
        num_train, num_val, num_test: images per split (0 skips the split).
        image_size: side of the square images in pixels (>= 8).
        num_classes: number of shape classes, 2 to 12.
        seed: the only source of randomness.
        archives: also write one `.tar.gz` per folder.
        image_format: "png" (lossless, default) or "jpg".
        num_workers: processes for rendering; default: the available cores (at most 8).
        overwrite: replace a dataset already written in `out_dir` (only its own entries are removed).

    Returns:
        Name (as in the layout, e.g. "images_train", "labeled_val.tar.gz", "dataset.json") -> path.
    """
    out_dir = Path(out_dir).expanduser()
    counts = {"train": num_train, "val": num_val, "test": num_test}
    _check_arguments(out_dir, counts, image_size, num_classes, image_format)
    splits = [s for s in SPLITS if counts[s] > 0]
    names = [f"{kind}_{s}" for s in splits for kind in ("images", "labeled")]
    _clear_previous(out_dir, overwrite)
    start = time.monotonic()
    tasks, summary = [], {}
    for split in splits:
        labels = split_labels(seed, split, counts[split], num_classes)
        (out_dir / f"images_{split}").mkdir(parents=True)
        for name in SHAPE_CLASSES[:num_classes]:
            (out_dir / f"labeled_{split}" / name).mkdir(parents=True)
        tasks += [
            (
                str(out_dir),
                split,
                lo,
                min(lo + _CHUNK, counts[split]),
                labels[lo : lo + _CHUNK].tolist(),
                seed,
                image_size,
                image_format,
            )
            for lo in range(0, counts[split], _CHUNK)
        ]
        per_class = np.bincount(labels, minlength=num_classes)
        summary[split] = {
            "num_images": counts[split],
            "class_counts": dict(zip(SHAPE_CLASSES[:num_classes], per_class.tolist(), strict=True)),
        }
    workers = _workers(num_workers, sum(counts.values()))
    archive_tasks = [(str(out_dir / n), str(out_dir / f"{n}.tar.gz")) for n in names] if archives else []
    _run(workers, "render", tasks)
    _run(workers, "archive", archive_tasks)
    meta = {
        "generator": "foveal.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "num_train": num_train,
        "num_val": num_val,
        "num_test": num_test,
        "num_classes": num_classes,
        "image_size": image_size,
        "image_format": image_format,
        "classes": list(SHAPE_CLASSES[:num_classes]),
        "splits": summary,
    }
    (out_dir / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    logger.info(
        "Wrote %d synthetic images (%d classes, %d px) to %s in %.1f s",
        sum(counts.values()),
        num_classes,
        image_size,
        out_dir,
        time.monotonic() - start,
    )
    result = {n: out_dir / n for n in names}
    result.update({Path(a).name: Path(a) for _, a in archive_tasks})
    result["dataset.json"] = out_dir / "dataset.json"
    return result


def _check_arguments(
    out_dir: Path, counts: dict[str, int], image_size: int, num_classes: int, fmt: str
) -> None:
    if any(n < 0 for n in counts.values()) or not any(counts.values()):
        raise DatasetError(
            out_dir, f"split sizes must be >= 0 and not all 0, got {counts}", "pass num_train > 0"
        )
    if image_size < 8:
        raise DatasetError(out_dir, f"image_size must be >= 8, got {image_size}", "use e.g. 64")
    if not 2 <= num_classes <= len(SHAPE_CLASSES):
        raise DatasetError(
            out_dir, f"num_classes must be 2..{len(SHAPE_CLASSES)}, got {num_classes}", "use e.g. 8"
        )
    if fmt not in ("png", "jpg"):
        raise DatasetError(out_dir, f"image_format must be 'png' or 'jpg', got {fmt!r}", "use 'png'")


def _clear_previous(out_dir: Path, overwrite: bool) -> None:
    ours = [
        out_dir / f"{kind}_{s}{ext}"
        for s in SPLITS
        for kind in ("images", "labeled")
        for ext in ("", ".tar.gz")
    ]
    existing = [p for p in [*ours, out_dir / "dataset.json"] if p.exists()]
    if existing and not overwrite:
        raise DatasetError(
            out_dir,
            f"already holds a dataset ({existing[0].name})",
            "pass overwrite=True or pick another folder",
        )
    for path in existing:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _workers(requested: int | None, total: int) -> int:
    if requested is not None:
        return max(1, requested)
    if total < _PARALLEL_MIN:
        return 1
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, available))


def _run(workers: int, kind: str, tasks: list) -> None:
    """Run `_TASKS[kind]` over `tasks`, in `workers` fresh interpreters when more than one.

    Fresh interpreters (not multiprocessing) because fork is unsafe in a process running threads
    (torch, fsspec), and spawn/forkserver re-run the caller's `__main__`, which breaks scripts
    without a main guard and code fed on stdin. Rendering depends only on each task, so the
    split across workers does not change a byte.
    """
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            _TASKS[kind](task)
        return
    env = dict(os.environ)  # let the child import this very copy of foveal, installed or not
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="foveal-synthetic-") as tmp:
        procs = []
        for rank in range(min(workers, len(tasks))):
            shard = Path(tmp) / f"tasks_{rank}.json"
            shard.write_text(json.dumps(tasks[rank::workers]))
            log = open(Path(tmp) / f"stderr_{rank}.txt", "wb")  # a file, so a chatty child never blocks
            procs.append(
                (
                    subprocess.Popen(
                        [sys.executable, "-c", _WORKER_CODE, kind, str(shard)],
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        env=env,
                    ),
                    log,
                )
            )
        failures = []
        for proc, log in procs:
            if proc.wait() != 0:
                failures.append(
                    Path(log.name).read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
                )
            log.close()
    if failures:
        raise RuntimeError(f"synthetic data worker failed: {failures[0][0]}")


_WORKER_CODE = (
    "import sys; from foveal.data.synthetic import _worker_main; _worker_main(sys.argv[1], sys.argv[2])"
)


def _worker_main(kind: str, tasks_file: str) -> None:
    for task in json.loads(Path(tasks_file).read_text()):
        _TASKS[kind](task)


_TASKS = {"render": _write_chunk, "archive": _write_tar_gz}
