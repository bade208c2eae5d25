"""Typed spec fields carrying TAO's metadata vocabulary.

A network's spec is a tree of dataclasses. Every leaf is declared with :func:`field`, which
records the default and the metadata TAO's generated schemas carry (``display_name``,
``valid_min``, ``automl_enabled``, ...). Sections are declared with :func:`section`. That one
declaration is the single source of defaults, types, bounds and docs: JSON schemas, YAML
templates, validation and AutoML search spaces are all generated from it.

Example::

    @dataclass
    class OptimConfig:
        lr: float = field(1e-3, valid_min=0.0, valid_max=1.0, automl_enabled=True,
                          description="Base learning rate.")
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING
from typing import Any, Literal, Union, get_args, get_origin

# TAO's field metadata keys, in the order generated schemas list them.
METADATA_KEYS = (
    "display_name",
    "description",
    "default_value",
    "valid_min",
    "valid_max",
    "valid_options",
    "option_weights",
    "required",
    "popular",
    "automl_enabled",
    "math_cond",
    "depends_on",
    "parent_param",
    "regex",
)

_FOVEAL_KEY = "foveal"


def field(
    default: Any = MISSING,
    *,
    default_factory: Any = MISSING,
    display_name: str | None = None,
    description: str = "",
    valid_min: float | None = None,
    valid_max: float | None = None,
    valid_options: Sequence[Any] | None = None,
    option_weights: Sequence[float] | None = None,
    required: bool | Sequence[str] = False,
    popular: bool = False,
    automl_enabled: bool = False,
    math_cond: str | None = None,
    depends_on: str | None = None,
    parent_param: bool = False,
    regex: str | None = None,
    normalize: Callable[[Any], Any] | None = None,
    required_unless: str | None = None,
) -> Any:
    """Declare a spec leaf with its default and TAO metadata.

    Args:
        default: the default value (use ``default_factory`` for lists).
        required: ``True`` for every action, or the names of the actions that need it
            (e.g. ``("train",)``). A required field may still have a default of ``None``;
            validation fails when it is left empty for those actions.
        valid_min / valid_max: inclusive numeric bounds (for lists: bounds of each item).
        valid_options: the allowed values; generated schemas emit them as ``enum``.
        automl_enabled: whether AutoML searches this field by default.
        math_cond: a TAO-style condition such as ``"> 0"`` or ``"% 2 == 0"`` (documentation
            and AutoML only; checks that matter are written as validators).
        depends_on: a dotted key this field only makes sense with.
        required_unless: a sibling field that, when set, makes this one optional (e.g. an
            evaluate checkpoint is not needed when ``trt_engine`` is given).
        normalize: maps a value as written to its canonical form before validation (e.g. TAO's
            precision spellings ``16-mixed`` / ``fp16`` to one name).
    """
    if default is not MISSING and isinstance(default, (list, dict, set)):
        raise TypeError("use default_factory for mutable defaults")
    meta = {
        "display_name": display_name,
        "description": description,
        "valid_min": valid_min,
        "valid_max": valid_max,
        "valid_options": list(valid_options) if valid_options is not None else None,
        "option_weights": list(option_weights) if option_weights is not None else None,
        "required": required if isinstance(required, bool) else tuple(required),
        "popular": popular,
        "automl_enabled": automl_enabled,
        "math_cond": math_cond,
        "depends_on": depends_on,
        "parent_param": parent_param,
        "regex": regex,
        "normalize": normalize,
        "required_unless": required_unless,
    }
    kwargs: dict[str, Any] = {"metadata": {_FOVEAL_KEY: meta}}
    if default_factory is not MISSING:
        kwargs["default_factory"] = default_factory
    elif default is not MISSING:
        kwargs["default"] = default
    return dataclasses.field(**kwargs)


def section(cls: type, *, description: str = "", display_name: str | None = None) -> Any:
    """Declare a nested section whose default is ``cls()``."""
    meta = {"description": description, "display_name": display_name, "section": True}
    return dataclasses.field(default_factory=cls, metadata={_FOVEAL_KEY: meta})


def field_meta(f: dataclasses.Field) -> dict[str, Any]:
    """The metadata recorded by :func:`field` (defaults for a plain dataclass field)."""
    meta = dict(f.metadata.get(_FOVEAL_KEY, {}))
    meta.setdefault("description", "")
    meta.setdefault("required", False)
    return meta


def field_default(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


def is_section_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def resolved_fields(cls: type) -> list[tuple[dataclasses.Field, Any]]:
    """The dataclass fields of ``cls`` with their annotations resolved to real types."""
    hints = typing.get_type_hints(cls)
    return [(f, hints[f.name]) for f in dataclasses.fields(cls)]


def unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``Optional[X]`` -> ``(X, True)``; anything else -> ``(tp, False)``."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) < len(get_args(tp)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True  # noqa: UP007
    return tp, False


def type_name(tp: Any) -> str:
    """A short human name for a spec type, used in error messages."""
    tp, optional = unwrap_optional(tp)
    origin = get_origin(tp)
    if origin is Literal:
        name = " | ".join(repr(a) for a in get_args(tp))
    elif origin in (list, Sequence):
        (item,) = get_args(tp) or (Any,)
        name = f"list of {type_name(item)}"
    elif origin is dict:
        name = "mapping"
    elif is_section_type(tp):
        name = "section"
    elif origin in (Union, types.UnionType):
        name = " or ".join(type_name(a) for a in get_args(tp))
    else:
        name = {int: "integer", float: "number", bool: "boolean", str: "string"}.get(tp, str(tp))
    return f"{name} or null" if optional else name
