"""The search space of a study, generated from a network's train schema metadata.

Which keys: the schema's ``automl_default_parameters`` (fields declared ``automl_enabled``), or
the keys the user names (``--params``, ``--range``); a searchable field that is not
``automl_enabled`` (``automl_disabled_parameters``) is searched only when named.

Ranges: ``valid_min``/``valid_max`` for numbers (log scale for a positive range spanning more
than two decades, e.g. a learning rate), ``valid_options`` (weighted by ``option_weights``) for
choices, ``[False, True]`` for a named boolean; ``math_cond`` narrows the range (``"> 0"``
excludes the bound, ``"% 8 == 0"`` steps an integer, ``"< train.num_epochs"`` bounds it by
another key's value in the base spec, when that key is not searched itself); ``depends_on`` makes a parameter
conditional: it is sampled only while the key it depends on is true in that trial.
"""

from __future__ import annotations

import difflib
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from foveal.errors import UsageError
from foveal.networks.registry import Network
from foveal.spec import action_schema, get_dotted, walk_leaves
from foveal.spec.fields import unwrap_optional

logger = logging.getLogger(__name__)

LOG_SCALE_DECADES = 2.0  # a positive range wider than this many decades is searched in log space
_COND_RE = re.compile(r"^\s*(>=|<=|>|<)\s*(-?[0-9.eE+-]+|[A-Za-z_][\w.]*)\s*$")
_MOD_RE = re.compile(r"^\s*%\s*(\d+)\s*==\s*0\s*$")
_WEIGHT_SUFFIX = "#u"  # weighted choices are drawn through a uniform variable of this name


@dataclass(frozen=True)
class Param:
    """One searched spec key.

    Attributes:
        key: the dotted spec key, e.g. ``train.optim.lr``.
        kind: ``float``, ``int`` or ``categorical``.
        low / high / log / step: numeric range (inclusive).
        choices / weights: categorical options and their sampling weights (None: uniform).
        depends_on: a dotted key that must be true for this parameter to be sampled.
    """

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()
    weights: tuple[float, ...] | None = None
    depends_on: str | None = None

    def suggest(self, trial: Any) -> Any:
        """Draw this parameter's value in an Optuna trial."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log)
        if self.kind == "int":
            low, high = self.low, self.high
            assert low is not None and high is not None  # an int parameter always has a range
            return trial.suggest_int(self.key, int(low), int(high), log=self.log, step=self.step or 1)
        if self.weights is None:
            return trial.suggest_categorical(self.key, list(self.choices))
        # Optuna's categorical distribution has no weights: draw u ~ U(0, 1) and map it through
        # the cumulative weights (inverse CDF), so the sampler still sees one numeric parameter.
        u = trial.suggest_float(self.key + _WEIGHT_SUFFIX, 0.0, 1.0)
        total, cumulative = sum(self.weights), 0.0
        for choice, weight in zip(self.choices, self.weights, strict=True):
            cumulative += weight / total
            if u < cumulative:
                return choice
        return self.choices[-1]

    def describe(self) -> str:
        if self.kind == "categorical":
            shown = ", ".join(str(c) for c in self.choices)
            weights = f" weights {list(self.weights)}" if self.weights else ""
            text = f"{{{shown}}}{weights}"
        else:
            text = f"[{self.low:g}, {self.high:g}]{' log' if self.log else ''}"
            text += f" step {self.step}" if self.step and self.step > 1 else ""
        return f"{self.key} {self.kind} {text}" + (f" if {self.depends_on}" if self.depends_on else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "kind": self.kind,
            "low": self.low,
            "high": self.high,
            "log": self.log,
            "step": self.step,
            "choices": list(self.choices),
            "weights": list(self.weights) if self.weights else None,
            "depends_on": self.depends_on,
        }


@dataclass
class SearchSpace:
    """The parameters of a study, dependencies before the parameters that depend on them."""

    params: list[Param] = field(default_factory=list)

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def sample(self, trial: Any, base: Mapping[str, Any]) -> dict[str, Any]:
        """Draw one configuration; a parameter whose ``depends_on`` is false is left out.

        Args:
            base: the resolved base spec (plain data), for dependencies that are not searched.
        """
        values: dict[str, Any] = {}
        for param in self.params:
            if param.depends_on is not None:
                enabled = values.get(param.depends_on, get_dotted(base, param.depends_on))
                if not enabled:
                    continue
            values[param.key] = param.suggest(trial)
        return values

    def to_dicts(self) -> list[dict[str, Any]]:
        return [p.to_dict() for p in self.params]


def param_name(optuna_name: str) -> str:
    """The spec key of an Optuna parameter name (weighted choices carry a suffix)."""
    return optuna_name.removesuffix(_WEIGHT_SUFFIX)


def _leaves(network: Network) -> dict[str, tuple[Any, dict[str, Any]]]:
    return {key: (tp, meta) for key, tp, meta, _ in walk_leaves(network.config_cls)}


def _unknown_key(key: str, known: Sequence[str], flag: str) -> UsageError:
    near = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}?" if near else "see `foveal schema NETWORK train`"
    return UsageError(f"{flag} {key}: not a key of the train spec ({hint})")


def build_space(
    network: Network,
    params: Sequence[str] | None = None,
    ranges: Mapping[str, str] | None = None,
    base: Mapping[str, Any] | None = None,
) -> SearchSpace:
    """The search space for ``network``'s train action.

    Args:
        params: keys to search (default: the schema's ``automl_default_parameters``).
        ranges: key -> ``"lo:hi"``, ``"lo:hi:log"`` or ``"a,b,c"``; naming a key here also
            adds it to the space.
        base: the resolved base spec; a parameter that depends on a key false there (and not
            searched) is dropped with a warning.

    Raises:
        UsageError: unknown key, a key without a range, a bad or out-of-bounds range.
    """
    leaves = _leaves(network)
    ranges = dict(ranges or {})
    schema = action_schema(network.config_cls, "train", network.action_sections.get("train"))
    keys = list(params) if params else list(schema["automl_default_parameters"])
    keys += [k for k in ranges if k not in keys]
    if not keys:
        raise UsageError(
            f"{network.name}: the train schema enables no AutoML parameters; pass --params a.b,c.d"
        )
    for key in keys:
        if key not in leaves:
            raise _unknown_key(key, list(leaves), "--range" if key in ranges else "--params")
    built = {key: _param(key, *leaves[key], ranges.get(key), base, keys) for key in keys}
    ordered = _dependency_order(built)
    kept = []
    for param in ordered:
        dep = param.depends_on
        if dep is not None and dep not in built and base is not None and not get_dotted(base, dep):
            logger.warning("%s is not searched: it depends on %s, which is false in the spec", param.key, dep)
            continue
        kept.append(param)
    return SearchSpace(kept)


def _dependency_order(built: dict[str, Param]) -> list[Param]:
    """Parameters with the ones others depend on first (stable otherwise)."""
    out: list[Param] = []
    placed: set[str] = set()

    def place(key: str, trail: tuple[str, ...]) -> None:
        if key in placed:
            return
        if key in trail:
            raise UsageError(
                f"AutoML parameters depend on each other in a cycle: {' -> '.join(trail + (key,))}"
            )
        dep = built[key].depends_on
        if dep in built:
            place(dep, trail + (key,))
        placed.add(key)
        out.append(built[key])

    for key in built:
        place(key, ())
    return out


def _param(
    key: str,
    tp: Any,
    meta: dict[str, Any],
    override: str | None,
    spec: Mapping[str, Any] | None = None,
    searched: Sequence[str] = (),
) -> Param:
    base, _ = unwrap_optional(tp)
    depends_on = meta.get("depends_on")
    options = meta.get("valid_options")
    if options or base is bool:
        choices = tuple(options) if options else (False, True)
        weights = meta.get("option_weights") if options else None
        if override is not None:
            choices, weights = _parse_choices(key, override, choices), None
        return Param(
            key,
            "categorical",
            choices=choices,
            weights=_weights(key, choices, weights),
            depends_on=depends_on,
        )
    if base not in (int, float):
        raise UsageError(
            f"--params {key}: a {getattr(base, '__name__', base)} field cannot be searched "
            "(only numbers, booleans and fields with options)"
        )
    lo, hi, log = meta.get("valid_min"), meta.get("valid_max"), None
    if override is not None:
        lo, hi, log = _parse_range(key, override, meta)
    if lo is None or hi is None:
        raise UsageError(
            f"--params {key}: the schema gives no {'valid_min' if lo is None else 'valid_max'}; "
            f"pass --range {key}=LOW:HIGH"
        )
    kind = "int" if base is int else "float"
    cond = _cond_with_values(key, meta.get("math_cond"), spec, searched)
    lo, hi, step = _apply_math_cond(key, kind, float(lo), float(hi), cond)
    if lo > hi:
        given = meta.get("math_cond")
        rule = repr(given) if cond == given else f"{given!r} ({cond} in this spec)"
        raise UsageError(
            f"--range {key}: empty range [{lo:g}, {hi:g}] after math_cond {rule}; "
            "widen the range or change the spec"
        )
    if log is None:
        log = lo > 0 and math.log10(hi / lo) > LOG_SCALE_DECADES and (step or 1) == 1
    if log and lo <= 0:
        raise UsageError(f"--range {key}: a log range needs a low bound > 0, got {lo:g}")
    return Param(key, kind, low=lo, high=hi, log=bool(log), step=step, depends_on=depends_on)


def _weights(key: str, choices: tuple[Any, ...], weights: Sequence[float] | None) -> tuple[float, ...] | None:
    if not weights:
        return None
    if len(weights) != len(choices) or any(w < 0 for w in weights) or sum(weights) <= 0:
        logger.warning("%s: ignoring option_weights %s (need one weight >= 0 per option)", key, list(weights))
        return None
    if len(set(weights)) == 1:
        return None  # uniform: a plain categorical parameter reads better in reports
    return tuple(float(w) for w in weights)


def _parse_choices(key: str, text: str, allowed: tuple[Any, ...]) -> tuple[Any, ...]:
    values = tuple(yaml.safe_load(v.strip()) for v in text.split(",") if v.strip())
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        shown = ", ".join(str(a) for a in allowed)
        raise UsageError(f"--range {key}={text}: expected a comma-separated subset of: {shown}")
    return values


def _parse_range(key: str, text: str, meta: dict[str, Any]) -> tuple[float, float, bool | None]:
    parts = text.split(":")
    scale = parts[2].strip().lower() if len(parts) == 3 else None
    try:
        if len(parts) not in (2, 3) or scale not in (None, "log", "linear"):
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise UsageError(
            f"--range {key}={text}: expected LOW:HIGH or LOW:HIGH:log (e.g. {key}=1e-5:1e-3:log)"
        ) from None
    vmin, vmax = meta.get("valid_min"), meta.get("valid_max")
    if lo > hi or (vmin is not None and lo < vmin) or (vmax is not None and hi > vmax):
        bounds = f"[{'-inf' if vmin is None else vmin}, {'inf' if vmax is None else vmax}]"
        raise UsageError(f"--range {key}={text}: need LOW <= HIGH within the valid range {bounds}")
    return lo, hi, None if scale is None else scale == "log"


def _cond_with_values(
    key: str, cond: str | None, base: Mapping[str, Any] | None, searched: Sequence[str]
) -> str | None:
    """``"< train.num_epochs"`` -> ``"< 10"`` with the base spec's value; None (no narrowing)
    when that key is searched too or there is no base to read it from."""
    match = _COND_RE.match(cond or "")
    if not match or not re.match(r"[A-Za-z_]", match.group(2)):
        return cond
    other = match.group(2)
    if base is None:
        return None
    if other in searched:
        logger.warning("%s: math_cond %r not applied (%s is searched too)", key, cond, other)
        return None
    value = get_dotted(base, other)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        logger.warning("%s: math_cond %r not applied (%s = %r is not a number)", key, cond, other, value)
        return None
    return f"{match.group(1)} {value}"


def _apply_math_cond(
    key: str, kind: str, lo: float, hi: float, cond: str | None
) -> tuple[float, float, int | None]:
    """Narrow ``[lo, hi]`` by a TAO ``math_cond`` (``"> 0"``, ``"<= 1"``, ``"% 8 == 0"``)."""
    if not cond:
        return lo, hi, None
    match = _COND_RE.match(cond)
    if match:
        op, bound = match.group(1), float(match.group(2))
        strict = op in (">", "<")
        if op.startswith(">") and lo <= bound:
            lo = (
                (math.floor(bound) + 1 if kind == "int" else math.nextafter(bound, math.inf))
                if strict
                else bound
            )
        elif op.startswith("<") and hi >= bound:
            hi = (
                (math.ceil(bound) - 1 if kind == "int" else math.nextafter(bound, -math.inf))
                if strict
                else bound
            )
        return lo, hi, None
    match = _MOD_RE.match(cond)
    if match and kind == "int":
        step = int(match.group(1))
        lo, hi = math.ceil(lo / step) * step, math.floor(hi / step) * step
        return lo, hi, step
    logger.warning("%s: math_cond %r is not understood by AutoML; searching the plain range", key, cond)
    return lo, hi, None
