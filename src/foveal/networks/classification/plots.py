"""Confusion matrix as a PNG, drawn with PIL (no plotting library needed).

Rows are true classes, columns predictions. A cell's colour is its share of the true class
(row-normalised, so recall is on the diagonal); its text is the count. A colour bar explains
the scale; class names label both axes.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

_LOW = (247, 251, 255)  # colour of 0 % of the row
_HIGH = (8, 48, 107)  # colour of 100 %
_MAX_LABEL = 24  # characters of a class name shown


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _colour(fraction: float) -> tuple[int, int, int]:
    f = min(1.0, max(0.0, fraction))
    r, g, b = (round(lo + (hi - lo) * f) for lo, hi in zip(_LOW, _HIGH, strict=True))
    return r, g, b


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return int(right - left), int(bottom - top)


def _short(name: str) -> str:
    return name if len(name) <= _MAX_LABEL else name[: _MAX_LABEL - 1] + "…"


def draw_confusion_matrix(
    matrix: Sequence[Sequence[int]], classes: Sequence[str], path: str | Path, title: str = ""
) -> Path:
    """Write the confusion matrix ``matrix`` (C, C) of ``classes`` to ``path`` (PNG).

    Args:
        matrix: counts; rows are true classes, columns predicted classes.
        classes: the C class names.
        path: output file.
        title: a line above the matrix (e.g. the top-1 accuracy).

    Returns:
        ``path``.
    """
    n = len(classes)
    cell = max(12, min(64, 640 // max(1, n)))
    font = _font(max(9, min(16, cell // 3)))
    small = _font(max(9, min(14, cell // 3)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    labels = [_short(c) for c in classes]
    label_w = max(_text_size(probe, t, font)[0] for t in labels) + 10
    line_h = _text_size(probe, "Ag", font)[1] + 8
    pad, bar_w = 16, 16
    left = pad + line_h + label_w  # axis caption + class names
    top = pad + 2 * line_h  # title + spacing
    grid = n * cell
    bar_x = left + grid + 24
    width = bar_x + bar_w + _text_size(probe, "100%", small)[0] + 12 + pad
    height = top + grid + label_w + line_h + pad
    image = Image.new("RGB", (width, max(height, top + grid + pad)), "white")
    draw = ImageDraw.Draw(image)

    if title:
        draw.text((left, pad), title, fill="black", font=font)
    show_counts = cell >= 18
    for i, row in enumerate(matrix):
        total = max(1, sum(row))
        for j, count in enumerate(row):
            x0, y0 = left + j * cell, top + i * cell
            fraction = count / total
            draw.rectangle(
                [x0, y0, x0 + cell - 1, y0 + cell - 1], fill=_colour(fraction), outline=(200, 200, 200)
            )
            if show_counts:
                text = str(int(count))
                tw, th = _text_size(draw, text, small)
                colour = "white" if fraction > 0.5 else "black"
                draw.text((x0 + (cell - tw) / 2, y0 + (cell - th) / 2 - 1), text, fill=colour, font=small)
    draw.rectangle([left - 1, top - 1, left + grid, top + grid], outline="black")

    for i, name in enumerate(labels):  # true classes, right-aligned left of the rows
        tw, th = _text_size(draw, name, font)
        draw.text((left - tw - 6, top + i * cell + (cell - th) / 2 - 1), name, fill="black", font=font)
    for j, name in enumerate(labels):  # predicted classes, written downwards under the columns
        tw, th = _text_size(draw, name, font)
        strip = Image.new("RGB", (tw + 2, th + 6), "white")
        ImageDraw.Draw(strip).text((0, 0), name, fill="black", font=font)
        rotated = strip.rotate(90, expand=True)
        image.paste(rotated, (int(left + j * cell + (cell - rotated.width) / 2), top + grid + 6))

    caption = "predicted class"
    tw, _ = _text_size(draw, caption, font)
    draw.text((left + (grid - tw) / 2, top + grid + label_w + 4), caption, fill="black", font=font)
    caption = "true class"
    tw, th = _text_size(draw, caption, font)
    strip = Image.new("RGB", (tw + 2, th + 6), "white")
    ImageDraw.Draw(strip).text((0, 0), caption, fill="black", font=font)
    rotated = strip.rotate(90, expand=True)
    image.paste(rotated, (pad, int(top + (grid - rotated.height) / 2)))

    for y in range(grid):  # colour bar: 100 % at the top
        draw.line([bar_x, top + y, bar_x + bar_w, top + y], fill=_colour(1.0 - y / max(1, grid - 1)))
    draw.rectangle([bar_x, top, bar_x + bar_w, top + grid - 1], outline="black")
    for value, label in ((1.0, "100%"), (0.5, "50%"), (0.0, "0%")):
        label_y = top + (1.0 - value) * (grid - 1)
        _, th = _text_size(draw, label, small)
        draw.text((bar_x + bar_w + 4, label_y - th / 2 - 1), label, fill="black", font=small)

    path = Path(path)
    image.save(path, format="PNG")
    return path
