"""RandAugment on PIL images, configured by a timm-style policy string.

Cubuk et al., "RandAugment: Practical automated data augmentation with a reduced search space"
(arXiv:1909.13719): apply ``n`` operations drawn uniformly from a fixed list, all at one global
magnitude ``m`` (0-10). Options of the policy string, after ``rand``, separated by ``-``:

- ``m<int|float>``: magnitude (default 10); ``n<int>``: operations per image (default 2);
- ``mstd<float>``: std of Gaussian noise added to the magnitude per operation (``inf``: uniform
  in [0, m]); ``mmax<float>``: upper clip of the noisy magnitude (default 10);
- ``p<float>``: probability each chosen operation is applied (default 0.5);
- ``inc<0|1>``: use the "increasing" variants, whose strength grows with the magnitude for
  every operation (Posterize, Solarize and the enhancers otherwise mix directions).

Example: ``rand-m9-mstd0.5-inc1``. Geometric operations fill with the ImageNet mean colour.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image, ImageEnhance, ImageOps

from .transforms import _TORCH_GLOBAL, RandomSource, _TorchRandom

LEVEL_MAX = 10.0
FILL = (124, 116, 104)  # ImageNet mean, 0-255

_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateX",
    "TranslateY",
)


@dataclass(frozen=True)
class RandAugmentPolicy:
    """Parsed policy string (see the module docstring)."""

    num_ops: int = 2
    magnitude: float = 10.0
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_MAX
    prob: float = 0.5
    increasing: bool = False


def parse_policy(policy: str) -> RandAugmentPolicy:
    """``"rand-m9-mstd0.5-inc1"`` -> :class:`RandAugmentPolicy`.

    Raises:
        ValueError: one line naming the part that is not understood.
    """
    parts = policy.strip().split("-")
    if parts[0] != "rand":
        raise ValueError(f"RandAugment policy {policy!r} must start with 'rand' (e.g. 'rand-m9-mstd0.5')")
    values: dict[str, float] = {}
    keys = {"mstd": "magnitude_std", "mmax": "magnitude_max", "inc": "increasing", "m": "magnitude"}
    keys |= {"n": "num_ops", "p": "prob"}
    for part in parts[1:]:
        name = next((k for k in ("mstd", "mmax", "inc", "m", "n", "p") if part.startswith(k)), None)
        try:
            value = float(part[len(name) :]) if name else None
        except ValueError:
            value = None
        if name is None or value is None:
            raise ValueError(
                f"RandAugment policy {policy!r}: {part!r} is not one of m<magnitude>, n<ops>, "
                "mstd<std>, mmax<max>, p<prob>, inc<0|1>"
            )
        values[keys[name]] = value
    out = RandAugmentPolicy(
        num_ops=int(values.get("num_ops", 2)),
        magnitude=values.get("magnitude", 10.0),
        magnitude_std=values.get("magnitude_std", 0.0),
        magnitude_max=values.get("magnitude_max", LEVEL_MAX),
        prob=values.get("prob", 0.5),
        increasing=bool(values.get("increasing", 0.0)),
    )
    if out.num_ops < 1 or not 0.0 <= out.prob <= 1.0 or out.magnitude < 0 or out.magnitude_std < 0:
        raise ValueError(f"RandAugment policy {policy!r}: need n >= 1, 0 <= p <= 1, m >= 0, mstd >= 0")
    return out


# ----------------------------------------------------------------------------- operations
# Each op: (image, level in [0, 1], rng, increasing) -> image.


def _signed(value: float, rng: random.Random | _TorchRandom) -> float:
    return -value if rng.random() < 0.5 else value


def _affine(img: Image.Image, matrix: tuple[float, ...]) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, Image.Resampling.BILINEAR, fillcolor=FILL)


def _rotate(img, level, rng, inc):
    return img.rotate(_signed(30.0 * level, rng), Image.Resampling.BILINEAR, fillcolor=FILL)


def _shear_x(img, level, rng, inc):
    return _affine(img, (1, _signed(0.3 * level, rng), 0, 0, 1, 0))


def _shear_y(img, level, rng, inc):
    return _affine(img, (1, 0, 0, _signed(0.3 * level, rng), 1, 0))


def _translate_x(img, level, rng, inc):
    return _affine(img, (1, 0, _signed(0.45 * level, rng) * img.size[0], 0, 1, 0))


def _translate_y(img, level, rng, inc):
    return _affine(img, (1, 0, 0, 0, 1, _signed(0.45 * level, rng) * img.size[1]))


def _posterize(img, level, rng, inc):
    # Bits kept: original 0..4 (weaker as m grows), increasing 4..0 (stronger as m grows); >= 1.
    bits = 4 - int(4 * level) if inc else int(4 * level)
    return ImageOps.posterize(img, max(1, bits))


def _solarize(img, level, rng, inc):
    threshold = 256 - int(256 * level) if inc else int(256 * level)
    return ImageOps.solarize(img, threshold)


def _solarize_add(img, level, rng, inc):
    add = int(110 * level)
    lut = [min(255, v + add) if v < 128 else v for v in range(256)]
    return img.point(lut * len(img.getbands()))


def _enhancer(cls: type) -> Callable:
    def op(img, level, rng, inc):
        # Original: factor in [0.1, 1.9] (level 0.5 = identity); increasing: 1 +- 0.9 * level.
        factor = 1.0 + _signed(0.9 * level, rng) if inc else 0.1 + 1.8 * level
        return cls(img).enhance(factor)

    return op


_FUNCS: dict[str, Callable] = {
    "AutoContrast": lambda img, level, rng, inc: ImageOps.autocontrast(img),
    "Equalize": lambda img, level, rng, inc: ImageOps.equalize(img),
    "Invert": lambda img, level, rng, inc: ImageOps.invert(img),
    "Rotate": _rotate,
    "Posterize": _posterize,
    "Solarize": _solarize,
    "SolarizeAdd": _solarize_add,
    "Color": _enhancer(ImageEnhance.Color),
    "Contrast": _enhancer(ImageEnhance.Contrast),
    "Brightness": _enhancer(ImageEnhance.Brightness),
    "Sharpness": _enhancer(ImageEnhance.Sharpness),
    "ShearX": _shear_x,
    "ShearY": _shear_y,
    "TranslateX": _translate_x,
    "TranslateY": _translate_y,
}


class RandAugment:
    """PIL image in, PIL image (same size and mode) out.

    Args:
        policy: a policy string or a parsed :class:`RandAugmentPolicy`.
        ops: names of the operations to draw from (default: all 15 of the paper).
        rng: a ``random.Random`` or ``torch.Generator``; None draws from torch's global
            generator (seeded per DataLoader worker), as the other transforms do.
    """

    def __init__(
        self,
        policy: str | RandAugmentPolicy,
        ops: Sequence[str] = _OPS,
        rng: RandomSource | None = None,
    ) -> None:
        self.policy = parse_policy(policy) if isinstance(policy, str) else policy
        unknown = [o for o in ops if o not in _FUNCS]
        if unknown:
            raise ValueError(f"unknown RandAugment operations {unknown}; known: {', '.join(_FUNCS)}")
        self.ops = tuple(ops)
        self.rng = rng
        self._source = _TorchRandom(rng) if isinstance(rng, torch.Generator) else rng

    def _rand(self) -> random.Random | _TorchRandom:
        return self._source if self._source is not None else _TORCH_GLOBAL

    def _level(self, rng: random.Random | _TorchRandom) -> float:
        """Magnitude for one operation, as a fraction of LEVEL_MAX."""
        p = self.policy
        m = p.magnitude
        if p.magnitude_std == math.inf:
            m = rng.uniform(0.0, m)
        elif p.magnitude_std > 0:
            # Box-Muller from two uniforms: works for random.Random and torch generators alike.
            u1, u2 = max(rng.random(), 1e-12), rng.random()
            m += p.magnitude_std * math.sqrt(-2.0 * math.log(u1)) * math.cos(2 * math.pi * u2)
        return max(0.0, min(p.magnitude_max, m)) / LEVEL_MAX

    def __call__(self, img: Image.Image) -> Image.Image:
        rng = self._rand()
        for _ in range(self.policy.num_ops):
            name = self.ops[rng.randint(0, len(self.ops) - 1)]
            if rng.random() >= self.policy.prob:
                continue
            img = _FUNCS[name](img, self._level(rng), rng, self.policy.increasing)
        return img

    def __repr__(self) -> str:
        return f"RandAugment({self.policy}, ops={len(self.ops)})"
