"""load_image conversions, scan_images, verify_images, DatasetError and the package API."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import foveal.data as data
from foveal.data import DatasetError, load_image, scan_images, verify_images
from foveal.data.images import describe_folder

pytestmark = pytest.mark.unit


def _save(im: Image.Image, path: Path, **kwargs) -> Path:
    im.save(path, **kwargs)
    return path


def _pixels(path: Path) -> np.ndarray:
    image = load_image(path)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_grey_l_and_bilevel(tmp_path):
    grey = Image.fromarray(np.array([[0, 100], [200, 255]], dtype=np.uint8), "L")
    out = _pixels(_save(grey, tmp_path / "g.png"))
    assert out[0, 1].tolist() == [100, 100, 100] and out[1, 1].tolist() == [255, 255, 255]
    bilevel = Image.fromarray(np.array([[0, 255], [255, 0]], dtype=np.uint8), "L").convert("1")
    out = _pixels(_save(bilevel, tmp_path / "b.png"))
    assert out[0, 0].tolist() == [0, 0, 0] and out[0, 1].tolist() == [255, 255, 255]


def test_palette_with_and_without_transparency(tmp_path):
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    out = _pixels(_save(pal, tmp_path / "p.png"))
    assert out[0].tolist() == [[255, 0, 0], [0, 255, 0]]
    out = _pixels(_save(pal, tmp_path / "pt.png", transparency=0))  # index 0 (red) is transparent
    assert out[0].tolist() == [[0, 0, 0], [0, 255, 0]]


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_composited_on_black(tmp_path, mode):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], dtype=np.uint8)
    im = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        im = im.convert("LA")
    out = _pixels(_save(im, tmp_path / "a.png")).astype(int)
    opaque = np.asarray(im.convert("RGB"))[0, 0].astype(int)
    assert out[0, 0].tolist() == opaque.tolist()
    assert out[0, 1].tolist() == [0, 0, 0]  # fully transparent -> black, whatever RGB it stored
    assert np.all(np.abs(out[0, 2] - opaque * 128 / 255) <= 1)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100, 65535, 1000]], dtype=np.uint16)
    im = Image.fromarray(values)
    assert im.mode.startswith("I;16")
    out = _pixels(_save(im, tmp_path / "w.png"))[0, :, 0]
    assert out.tolist() == [0, 100, 255, 4]  # PIL's own convert would give 255 for the last three


def test_int32_is_clipped_to_sixteen_bit_range(tmp_path):
    im = Image.fromarray(np.array([[-5, 257 * 10, 70_000]], dtype=np.int32), "I")
    out = _pixels(_save(im, tmp_path / "i.tif"))[0, :, 0]
    assert out.tolist() == [0, 10, 255]


def test_float_greys(tmp_path):
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F")
    assert _pixels(_save(unit, tmp_path / "u.tif"))[0, :, 0].tolist() == [0, 128, 255]
    wide = Image.fromarray(np.array([[3.0, 300.0, np.nan]], dtype=np.float32), "F")
    assert _pixels(_save(wide, tmp_path / "w.tif"))[0, :, 0].tolist() == [3, 255, 0]


def test_cmyk(tmp_path):
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (0, 0, 0, 255))
    out = _pixels(_save(cmyk, tmp_path / "c.tif"))
    assert out[0].tolist() == [[255, 255, 255], [0, 0, 0]]


@pytest.mark.parametrize(
    "suffix,fmt",
    [
        (".jpg", "JPEG"),
        (".bmp", "BMP"),
        (".webp", "WEBP"),
        (".ppm", "PPM"),
        (".pgm", "PPM"),
        (".tiff", "TIFF"),
    ],
)
def test_every_extension_reads_as_rgb(tmp_path, write_image, suffix, fmt):
    path = tmp_path / f"x{suffix}"
    if suffix == ".pgm":
        Image.new("L", (5, 4), 77).save(path, format=fmt)
    else:
        write_image(path, size=8, fmt=fmt)
    image = load_image(path)
    assert image.mode == "RGB" and image.size in ((8, 8), (5, 4))
    image.getpixel((0, 0))  # still usable after the file was closed


def test_corrupt_image_is_a_one_line_dataset_error(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(os.urandom(100))
    with pytest.raises(DatasetError) as info:
        load_image(bad)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)


def test_dataset_error_pickles_and_stays_on_one_line():
    err = DatasetError("s3://b/x", "not found\nat all", "did you mean s3://b/x.tar.gz?")
    again = pickle.loads(pickle.dumps(err))
    assert str(again) == str(err) == "s3://b/x: not found at all; did you mean s3://b/x.tar.gz?"
    assert isinstance(again, ValueError) and again.suggestion == err.suggestion


def test_scan_is_sorted_recursive_and_skips_hidden(tmp_path, write_image):
    for rel in [
        "b/z.png",
        "a.PNG",
        "b/a.jpeg",
        "a-b/c.webp",
        ".git/x.png",
        "b/.y.png",
        "c.txt",
        "__MACOSX/d.png",
    ]:
        write_image(tmp_path / rel) if rel.endswith(("png", "PNG", "jpeg", "webp")) else (
            tmp_path / rel
        ).write_text("x")
    rel = [p.relative_to(tmp_path).as_posix() for p in scan_images(tmp_path)]
    assert rel == ["a-b/c.webp", "a.PNG", "b/a.jpeg", "b/z.png"]
    assert [p.name for p in scan_images(tmp_path, recursive=False)] == ["a.PNG"]


def test_scan_survives_symlink_cycles(tmp_path, write_image):
    write_image(tmp_path / "sub" / "x.png")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    assert [p.name for p in scan_images(tmp_path)] == ["x.png"]


def test_scan_missing_or_file_root(tmp_path):
    with pytest.raises(DatasetError, match="folder not found"):
        scan_images(tmp_path / "nope")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="found a file"):
        scan_images(tmp_path / "f.png")


def test_verify_detects_truncated_and_garbage(tmp_path, write_image):
    good = write_image(tmp_path / "good.jpg", size=64, fmt="JPEG")
    truncated = tmp_path / "trunc.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(os.urandom(500))
    png = write_image(tmp_path / "ok.png", size=32)
    bad_crc = tmp_path / "crc.png"
    raw = bytearray(png.read_bytes())
    raw[60] ^= 0xFF  # inside the IDAT chunk: the CRC no longer matches
    bad_crc.write_bytes(bytes(raw))
    reasons = verify_images([good, truncated, garbage, png, bad_crc])
    assert [r is None for r in reasons] == [True, False, False, True, False]
    assert "truncated" in reasons[1]


def test_describe_folder(tmp_path):
    assert describe_folder(tmp_path) == "folder is empty"
    (tmp_path / "sub").mkdir()
    assert describe_folder(tmp_path) == "found 1 subfolders and no files"
    for name in ("a.txt", "b.csv", "c.txt"):
        (tmp_path / "sub" / name).write_text("x")
    assert describe_folder(tmp_path) == "found 3 files, none an image (extensions seen: .csv, .txt)"


def test_public_api_is_complete():
    assert sorted(data.__all__) == sorted([*data._EXPORTS, "DatasetError"])
    for name in data.__all__:
        assert getattr(data, name) is not None
    with pytest.raises(AttributeError):
        data.no_such_name  # noqa: B018
    from foveal.data.images import ImageFolderDataset  # the datasets are reachable from images too

    assert ImageFolderDataset is data.ImageFolderDataset


def test_torch_free_modules_do_not_import_torch():
    code = (
        "import sys, warnings; warnings.simplefilter('error'); import foveal.data; "
        "from foveal.data import DatasetError, synthetic, archive, uri, images; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
