"""Spec loading: defaults <- spec YAML <- dotted ``key=value`` overrides -> typed config.

Values are parsed as YAML data (scalars, lists, mappings), never evaluated. Validation walks
the schema once and collects every problem (unknown key with the nearest valid one, wrong
type, out of range, not in options, regex mismatch, required field missing) so a user fixes a
spec in one pass.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from foveal.errors import SpecError, SpecIssue
from foveal.secrets import redact
from foveal.spec.fields import (
    field_default,
    field_meta,
    is_section_type,
    resolved_fields,
    type_name,
    unwrap_optional,
)
from foveal.spec.interpolation import Unresolved, interpolate, needs_interpolation


def leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of a spec class, sections and leaves (``train``, ``train.num_epochs``...)."""
    keys: list[str] = []
    for f, tp in resolved_fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        if is_section_type(tp):
            keys.extend(leaf_keys(tp, key + "."))
    return keys


def _nearest(key: str, candidates: Sequence[str]) -> str:
    """The closest valid key, comparing full dotted keys and then the last component."""
    match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
    if match:
        return match[0]
    last = key.rsplit(".", 1)[-1]
    by_last = {c.rsplit(".", 1)[-1]: c for c in candidates}
    match = difflib.get_close_matches(last, list(by_last), n=1, cutoff=0.7)
    return by_last[match[0]] if match else ""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a spec file; malformed YAML is a SpecError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        hint = "check the path" if not path.exists() else "pass a YAML file, not a folder"
        raise SpecError(SpecIssue("", f"spec file {path} not found", hint))
    text = path.read_text(encoding="utf-8")
    try:
        _refuse_duplicate_keys(text, str(path))
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SpecError(SpecIssue("", f"malformed YAML{where}: {problem}"), source=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SpecError(
            SpecIssue("", f"expected a mapping at the top level, got {type(data).__name__}"), str(path)
        )
    return data


def _refuse_duplicate_keys(text: str, source: str) -> None:
    """A key given twice in one mapping is an error, as in OmegaConf (PyYAML keeps the last)."""
    issues: list[SpecIssue] = []

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                line = key_node.start_mark.line + 1
                dotted = f"{prefix}{key}"
                if key is not None and key != "<<":
                    if key in seen:
                        issues.append(
                            SpecIssue(
                                dotted,
                                f"duplicate key at lines {seen[key]} and {line}",
                                "keep one of them (OmegaConf, TAO's loader, refuses duplicate keys too)",
                            )
                        )
                    else:
                        seen[key] = line
                walk(value_node, f"{dotted}.")
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{prefix.rstrip('.')}[{i}].")

    for document in yaml.compose_all(text, Loader=yaml.SafeLoader):
        if document is not None:
            walk(document, "")
    if issues:
        raise SpecError(issues, source=source)


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """``["train.num_epochs=3", "model.arch=vit_base_patch16"]`` -> ``{dotted key: value}``."""
    parsed: dict[str, Any] = {}
    issues = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key.lstrip("+"):
            issues.append(SpecIssue(item, "override is not key=value", "write e.g. train.num_epochs=3"))
            continue
        if "${" in raw or raw.strip() == "???":  # OmegaConf syntax: text for interpolation, not YAML
            parsed[key] = raw.strip()
            continue
        try:
            parsed[key] = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            parsed[key] = raw  # an unquoted string YAML cannot parse is still a string value
    if issues:
        raise SpecError(issues)
    return parsed


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def get_dotted(data: Mapping[str, Any], key: str, default: Any = None) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


T = TypeVar("T")


def required(value: T | None, key: str) -> T:
    """``value`` of a field an action needs, typed as set.

    The schema marks such fields required for the action, so resolution has refused an empty one
    already; this keeps that promise visible to the type checker (and to a direct library call).

    Raises:
        SpecError: the field is empty.
    """
    if value is None or value == "":
        raise SpecError(SpecIssue(key, "required but not set", f"set {key}=..."))
    return value


def to_dict(cfg: Any, *, with_secrets: bool = False) -> dict[str, Any]:
    """A config dataclass as plain data (what ``experiment.yaml``, the registry and checkpoints hold).

    Secrets (``encryption_key``) come out as salted fingerprints (:func:`foveal.secrets.redact`)
    unless ``with_secrets``: whatever is written from this dict never holds a key.
    """
    data = dataclasses.asdict(cfg)
    return data if with_secrets else redact(data)


class _SpecDumper(yaml.SafeDumper):
    """Block style for sections, flow style for short lists of scalars (``[0.32, 1.0]``)."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(v, (dict, list)) for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_SpecDumper.add_representer(list, _represent_list)


def dump_yaml(data: Mapping[str, Any]) -> str:
    return yaml.dump(
        dict(data), Dumper=_SpecDumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )


def save_spec(cfg: Any, path: str | Path) -> Path:
    """Write the resolved spec atomically (e.g. a job's ``experiment.yaml``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(dump_yaml(to_dict(cfg)), encoding="utf-8")
    tmp.replace(path)
    return path


class _Validator:
    """Walks data against a spec class, building the typed config and collecting issues."""

    def __init__(self, action: str | None, sections: Iterable[str] | None = None):
        self.action = action
        self.sections = set(sections) if sections is not None else None
        self.issues: list[SpecIssue] = []

    def reads(self, key: str) -> bool:
        """Whether the action reads ``key``: top-level leaves always, sections when it uses them."""
        if self.sections is None:
            return True
        top = re.split(r"[.\[]", key, maxsplit=1)
        return len(top) == 1 or top[0] in self.sections

    def unresolved(self, value: Unresolved) -> None:
        """A ``???`` or a failing ``${...}``: an error only where the action reads it (OmegaConf
        resolves lazily, so TAO never sees the others)."""
        if self.reads(value.issue.key):
            self.issues.append(value.issue)

    def build(self, cls: type, data: Any, prefix: str = "") -> Any:
        if isinstance(data, Unresolved):
            self.unresolved(data)
            data = {}
        if not isinstance(data, Mapping):
            self.issues.append(SpecIssue(prefix.rstrip("."), f"expected a section (mapping), got {data!r}"))
            data = {}
        fields = resolved_fields(cls)
        names = [f.name for f, _ in fields]
        for key in data:
            if key not in names:
                self._unknown(cls, f"{prefix}{key}", prefix, names)
        kwargs = {}
        for f, tp in fields:
            key = f"{prefix}{f.name}"
            present = f.name in data
            if is_section_type(tp):
                kwargs[f.name] = self.build(tp, data.get(f.name, {}) if present else {}, key + ".")
                continue
            if present and isinstance(data[f.name], Unresolved):
                kwargs[f.name] = field_default(f)
                if data[f.name].mandatory:  # OmegaConf's merge keeps the schema's value under a ???
                    if not self._waived(data, field_meta(f)):  # a required_unless sibling is set
                        self._check_required(key, kwargs[f.name], field_meta(f), mandatory=True)
                else:
                    self.unresolved(data[f.name])
                continue
            before = len(self.issues)
            value = self.check(tp, data[f.name], key, field_meta(f)) if present else field_default(f)
            if len(self.issues) == before:  # one line per key: a bad value is not also "missing"
                if not self._waived(data, field_meta(f)):
                    self._check_required(key, value, field_meta(f))
            else:  # a bad value stands in as the default, so cross-field checks can still run
                value = field_default(f)
            kwargs[f.name] = value
        return cls(**kwargs)

    def _unknown(self, cls: type, key: str, prefix: str, names: list[str]) -> None:
        renamed = getattr(self, "renamed_keys", {}).get(key)
        if renamed:
            self.issues.append(SpecIssue(key, "unknown key (an old Foveal name)", f"use {renamed}"))
            return
        from_root = getattr(self, "root_keys", None) or [prefix + n for n in names]
        near = _nearest(key, from_root)
        hint = f"did you mean {near}?" if near else f"valid keys here: {', '.join(names)}"
        self.issues.append(SpecIssue(key, "unknown key", hint))

    @staticmethod
    def _waived(data: dict[str, Any], meta: dict[str, Any]) -> bool:
        """Whether the field's ``required_unless`` sibling holds a value (a ``???`` is no value)."""
        unless = meta.get("required_unless")
        value = data.get(unless) if unless else None
        return value not in (None, "") and not isinstance(value, Unresolved)

    def _check_required(self, key: str, value: Any, meta: dict[str, Any], mandatory: bool = False) -> None:
        required = meta.get("required")
        needed = required is True or (self.action is not None and self.action in (required or ()))
        if needed and value in (None, "", []):
            for_action = f" for {self.action}" if self.action else ""
            what = "mandatory (???) and" if mandatory else "required" + for_action + " but"
            unless = meta.get("required_unless")
            sibling = f" (or {key.rsplit('.', 1)[0]}.{unless}=...)" if unless and "." in key else ""
            self.issues.append(SpecIssue(key, f"{what} not set", f"set {key}=...{sibling}"))

    def check(self, tp: Any, value: Any, key: str, meta: dict[str, Any]) -> Any:
        base, optional = unwrap_optional(tp)
        normalize = meta.get("normalize")
        if normalize is not None and value is not None:
            value = normalize(value)
        if value is None:
            if not optional:
                self.issues.append(SpecIssue(key, f"expected {type_name(tp)}, got null"))
            return None
        value = self._check_type(base, value, key, tp)
        if value is _BAD:
            return None
        self._check_meta(value, key, meta)
        return value

    def _check_type(self, tp: Any, value: Any, key: str, full_tp: Any) -> Any:
        origin = get_origin(tp)
        if origin is Literal:
            return value  # options are checked from metadata or below
        if origin is list:
            (item_tp,) = get_args(tp) or (Any,)
            if isinstance(value, tuple):
                value = list(value)
            if value == "":  # TAO's templates write '' for an unset list
                value = []
            if not isinstance(value, list):
                return self._type_issue(key, full_tp, value)
            holes = [v for v in value if isinstance(v, Unresolved)]
            if holes:
                for hole in holes:
                    self.unresolved(hole)
                return _BAD
            if is_section_type(item_tp):
                return [self.build(item_tp, v, f"{key}[{i}].") for i, v in enumerate(value)]
            out = [self._check_type(item_tp, v, f"{key}[{i}]", item_tp) for i, v in enumerate(value)]
            return _BAD if any(v is _BAD for v in out) else out
        if origin is dict:
            if value == "":
                return {}
            return dict(value) if isinstance(value, Mapping) else self._type_issue(key, full_tp, value)
        if is_section_type(tp):
            return self.build(tp, value, key + ".")
        return self._check_scalar(tp, value, key, full_tp)

    def _check_scalar(self, tp: Any, value: Any, key: str, full_tp: Any) -> Any:
        if tp is bool:
            return value if isinstance(value, bool) else self._type_issue(key, full_tp, value)
        if tp is int:
            if isinstance(value, bool):
                return self._type_issue(key, full_tp, value)
            if isinstance(value, float) and value.is_integer():
                return int(value)
            return value if isinstance(value, int) else self._type_issue(key, full_tp, value)
        if tp is float:
            if isinstance(value, str):
                # YAML 1.1 reads 1e-6 (no dot) as a string; TAO specs are full of those.
                try:
                    return float(value)
                except ValueError:
                    return self._type_issue(key, full_tp, value)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return self._type_issue(key, full_tp, value)
            return float(value)
        if tp is str:
            # YAML reads 1e-3 or 2 as numbers; a str field takes them as text; a path (the Python
            # API's overrides) is its text too.
            if isinstance(value, (int, float, os.PathLike)) and not isinstance(value, bool):
                return str(value)
            return value if isinstance(value, str) else self._type_issue(key, full_tp, value)
        return value

    def _type_issue(self, key: str, tp: Any, value: Any) -> Any:
        shown = repr(value) if not isinstance(value, (dict, list)) else type(value).__name__
        self.issues.append(SpecIssue(key, f"expected {type_name(tp)}, got {shown}"))
        return _BAD

    def _check_meta(self, value: Any, key: str, meta: dict[str, Any]) -> None:
        items = value if isinstance(value, list) else [value]
        options = meta.get("valid_options")
        if options is not None:
            bad = [v for v in items if v not in options]
            if bad:
                opts = ", ".join(str(o) for o in options)
                self.issues.append(SpecIssue(key, f"{bad[0]!r} is not one of the options: {opts}"))
        lo, hi = meta.get("valid_min"), meta.get("valid_max")
        for v in items:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
                self.issues.append(SpecIssue(key, f"{v} is out of range {bounds}"))
                break
        regex = meta.get("regex")
        if regex and isinstance(value, str) and value and not re.fullmatch(regex, value):
            self.issues.append(SpecIssue(key, f"{value!r} does not match the pattern {regex}"))


_BAD = object()


def _validate(
    cls: type, data: Mapping[str, Any] | None, action: str | None, sections: Iterable[str] | None = None
) -> tuple[Any, list[SpecIssue]]:
    """The typed config (bad values replaced by their defaults) and every issue found."""
    validator = _Validator(action, sections)
    validator.root_keys = leaf_keys(cls)  # type: ignore[attr-defined]
    validator.renamed_keys = dict(getattr(cls, "renamed_keys", {}))  # type: ignore[attr-defined]
    cfg = validator.build(cls, data or {})
    return cfg, validator.issues


def build_config(
    cls: type,
    data: Mapping[str, Any] | None = None,
    *,
    action: str | None = None,
    source: str | None = None,
) -> Any:
    """Validate plain data against spec class ``cls`` and return the typed config.

    Raises:
        SpecError: with every issue found.
    """
    cfg, issues = _validate(cls, data, action)
    if issues:
        raise SpecError(issues, source=source)
    return cfg


def resolve_config(
    cls: type,
    data: Mapping[str, Any] | None = None,
    *,
    action: str | None = None,
    resolve: Any = None,
    source: str | None = None,
    sections: Iterable[str] | None = None,
) -> Any:
    """:func:`build_config`, then the network's ``resolve(cfg, action)`` hook; every problem of
    both is reported together.

    The cross-field checks run even when fields are missing or invalid (those stand in as their
    defaults), so a user fixes a spec in one pass: a missing dataset and a crop size the patch
    does not divide are two lines of one error.

    Raises:
        SpecError: with every issue found.
    """
    cfg, issues = _validate(cls, data, action, sections)
    if resolve is None:
        if issues:
            raise SpecError(issues, source=source)
        return cfg
    try:
        resolved = resolve(cfg, action)
    except SpecError as exc:
        shown = {str(i) for i in issues}
        issues = issues + [i for i in exc.issues if str(i) not in shown]
    except (TypeError, ValueError, AttributeError, KeyError):
        if not issues:
            raise
        # a check tripped over a value already reported (e.g. a missing path): report those
    if issues:
        raise SpecError(issues, source=source)
    return resolved


def load_spec(
    cls: type,
    spec_file: str | Path | None = None,
    overrides: Iterable[str] | Mapping[str, Any] = (),
    *,
    action: str | None = None,
    resolve: Any = None,
    sections: Iterable[str] | None = None,
) -> Any:
    """defaults <- spec file <- overrides -> validated config (then the network's resolve hook).

    Args:
        cls: the network's top-level spec dataclass.
        spec_file: a YAML file holding only the keys that differ from the defaults.
        overrides: ``"a.b=c"`` strings (or an already parsed ``{dotted key: value}`` mapping),
            applied last. ``+name=value`` (Hydra's spelling) outside the schema only feeds
            ``${name}`` references.
        action: the action the spec is for; fields required for it must be set.
        resolve: optional ``(cfg, action) -> cfg`` hook for derived values and cross-field checks.
        sections: the top-level sections the action reads (None: all). A ``???`` or a failing
            ``${...}`` elsewhere is left at its default, as OmegaConf's lazy resolution does.
    """
    data = spec_data(cls, read_yaml(spec_file) if spec_file is not None else {}, overrides)
    source = str(spec_file) if spec_file else None
    return resolve_config(cls, data, action=action, resolve=resolve, source=source, sections=sections)


def spec_data(
    cls: type, file_data: Mapping[str, Any], overrides: Iterable[str] | Mapping[str, Any] = ()
) -> dict[str, Any]:
    """A spec file's data with the overrides applied and every ``${...}`` resolved (a value
    that cannot resolve is an :class:`Unresolved`), not validated yet: what :func:`load_spec`
    validates, and what needs a spec's values before validation (a job's results folder).
    ``+name=value`` outside the schema only feeds ``${name}`` references (Hydra's spelling)."""
    from foveal.spec.schema import default_dict

    data = copy.deepcopy(dict(file_data))
    parsed = dict(overrides) if isinstance(overrides, Mapping) else parse_overrides(overrides)
    defaults = default_dict(cls)
    extra: dict[str, Any] = {}
    for key, value in parsed.items():
        if key.startswith("+"):  # Hydra's "add a key": a schema key is set, anything else is only
            key = key.lstrip("+")  # there for ${...} references to read
            if key.split(".")[0] not in defaults:
                set_dotted(extra, key, value)
                continue
        set_dotted(data, key, value)
    return interpolate(data, defaults, extra) if needs_interpolation(data) else data
