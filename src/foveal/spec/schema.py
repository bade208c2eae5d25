"""JSON schemas, YAML templates and action manifests generated from a spec class.

The generated action schema reads like TAO's: every property carries JSON Schema keywords
(``type``, ``default``, ``minimum``/``maximum``, ``enum``, ``description``) and TAO's metadata
vocabulary; the top level adds ``default`` (the full default spec),
``automl_default_parameters``, ``automl_disabled_parameters``, ``popular`` and ``required``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any, Literal, get_args, get_origin

from foveal.spec.fields import (
    METADATA_KEYS,
    field_default,
    field_meta,
    is_section_type,
    resolved_fields,
    unwrap_optional,
)
from foveal.spec.loader import dump_yaml

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def _json_type(tp: Any) -> dict[str, Any]:
    base, optional = unwrap_optional(tp)
    origin = get_origin(base)
    if origin is list:
        (item,) = get_args(base) or (Any,)
        out: dict[str, Any] = {"type": "array", "items": _json_item(item)}
    elif origin is dict:
        out = {"type": "object"}
    elif origin is Literal:
        out = {"enum": list(get_args(base))}
    else:
        out = {"type": _JSON_TYPES.get(base, "string")}
    if optional and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _json_item(tp: Any) -> dict[str, Any]:
    if is_section_type(tp):
        return class_schema(tp, action=None)
    return _json_type(tp)


def _leaf_schema(tp: Any, meta: dict[str, Any], default: Any, action: str | None) -> dict[str, Any]:
    prop = _json_type(tp)
    if is_section_type(tp):
        prop = class_schema(tp, action)
    prop["default"] = default
    prop["description"] = meta.get("description", "")
    if meta.get("valid_min") is not None:
        prop["minimum"] = meta["valid_min"]
    if meta.get("valid_max") is not None:
        prop["maximum"] = meta["valid_max"]
    if meta.get("valid_options") is not None:
        prop["enum"] = list(meta["valid_options"])
    if meta.get("regex"):
        prop["pattern"] = meta["regex"]
    for key in METADATA_KEYS:
        value = meta.get(key)
        if key == "default_value":
            value = default
        if key == "required":
            value = _is_required(meta, action)
        if value not in (None, False, "") or key in ("default_value", "required", "automl_enabled"):
            prop[key] = value
    return prop


def _is_required(meta: dict[str, Any], action: str | None) -> bool:
    required = meta.get("required")
    return required is True or (action is not None and action in (required or ()))


def class_schema(cls: type, action: str | None, sections: Iterable[str] | None = None) -> dict[str, Any]:
    """JSON schema of a spec class (optionally only the given top-level sections)."""
    wanted = set(sections) if sections is not None else None
    props: dict[str, Any] = {}
    required: list[str] = []
    for f, tp in resolved_fields(cls):
        if wanted is not None and is_section_type(tp) and f.name not in wanted:
            continue
        meta = field_meta(f)
        if is_section_type(tp):
            sub = class_schema(tp, action)
            sub["description"] = meta.get("description", "")
            props[f.name] = sub
        else:
            props[f.name] = _leaf_schema(tp, meta, field_default(f), action)
            if _is_required(meta, action):
                required.append(f.name)
    out: dict[str, Any] = {"type": "object", "properties": props, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


def walk_leaves(cls: type, prefix: str = "") -> Iterable[tuple[str, Any, dict[str, Any], Any]]:
    """Yield ``(dotted key, type, metadata, default)`` for every leaf of a spec class."""
    for f, tp in resolved_fields(cls):
        key = f"{prefix}{f.name}"
        if is_section_type(tp):
            yield from walk_leaves(tp, key + ".")
        else:
            yield key, tp, field_meta(f), field_default(f)


def default_dict(cls: type, sections: Iterable[str] | None = None) -> dict[str, Any]:
    """The defaults of a spec class as plain data (optionally only some top-level sections)."""
    wanted = set(sections) if sections is not None else None
    out: dict[str, Any] = {}
    for f, tp in resolved_fields(cls):
        if is_section_type(tp):
            if wanted is None or f.name in wanted:
                out[f.name] = default_dict(tp)
        else:
            value = field_default(f)
            if isinstance(value, list):
                value = [dataclasses.asdict(v) if is_section_type(type(v)) else v for v in value]
            elif is_section_type(type(value)):
                value = dataclasses.asdict(value)
            out[f.name] = value
    return out


def action_schema(cls: type, action: str, sections: Iterable[str] | None = None) -> dict[str, Any]:
    """The JSON schema of one action of a network, TAO-style top-level keys included."""
    schema = class_schema(cls, action, sections)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"{cls.__name__} ({action})"
    schema["default"] = default_dict(cls, sections)
    leaves = list(walk_leaves(cls))
    wanted = set(sections) if sections is not None else None
    in_sections = [
        leaf for leaf in leaves if wanted is None or "." not in leaf[0] or leaf[0].split(".")[0] in wanted
    ]
    schema["automl_default_parameters"] = [k for k, _, m, _ in in_sections if m.get("automl_enabled")]
    schema["automl_disabled_parameters"] = [
        k for k, tp, m, _ in in_sections if not m.get("automl_enabled") and _searchable(tp, m)
    ]
    schema["popular"] = [k for k, _, m, _ in in_sections if m.get("popular")]
    schema["required"] = [k for k, _, m, _ in in_sections if _is_required(m, action)]
    return schema


def _searchable(tp: Any, meta: dict[str, Any]) -> bool:
    """A numeric field with bounds, or a field with options, could be searched by AutoML."""
    base, _ = unwrap_optional(tp)
    numeric = base in (int, float) and (
        meta.get("valid_min") is not None or meta.get("valid_max") is not None
    )
    return numeric or bool(meta.get("valid_options"))


def spec_template(cls: type, action: str, sections: Iterable[str] | None = None) -> str:
    """A YAML spec template holding the defaults of the sections an action uses."""
    header = f"# {cls.__name__} spec for '{action}': defaults; keep only the keys you change.\n"
    return header + dump_yaml(default_dict(cls, sections))
