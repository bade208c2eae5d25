"""foveal.spec: one typed schema per network -> validation, JSON schemas, templates, overrides."""

from foveal.errors import SpecError, SpecIssue
from foveal.spec.fields import field, field_meta, section
from foveal.spec.loader import (
    build_config,
    dump_yaml,
    get_dotted,
    load_spec,
    parse_overrides,
    read_yaml,
    required,
    resolve_config,
    save_spec,
    set_dotted,
    to_dict,
)
from foveal.spec.schema import action_schema, default_dict, spec_template, walk_leaves

__all__ = [
    "SpecError",
    "SpecIssue",
    "action_schema",
    "build_config",
    "default_dict",
    "dump_yaml",
    "field",
    "field_meta",
    "get_dotted",
    "load_spec",
    "parse_overrides",
    "read_yaml",
    "required",
    "resolve_config",
    "save_spec",
    "section",
    "set_dotted",
    "spec_template",
    "to_dict",
    "walk_leaves",
]
