"""Networks made by ``foveal port hf``: the classification network on a ported backbone.

A port writes ``<workspace>/networks/<name>/network.json``. This module turns such an entry into
a :class:`~foveal.networks.registry.Network` that reuses the classification network's schema,
actions and handoff rules, with two differences:

* the schema's defaults are the port's (``model.backbone.type`` = the ported backbone, the input
  size and normalisation of the source model); a derived dataclass tree carries them, so
  templates, JSON schemas and AutoML read them from the one typed schema;
* every action first registers the ported backbone in :mod:`foveal.nn.registry` (cheaply: the
  weights are read when the model is built), so a fresh process that only knows the workspace
  can train, evaluate and export it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from foveal.networks.registry import ActionContext, ActionResult, Monitoring, Network, PortedFrom

logger = logging.getLogger(__name__)

ENTRY_FILE = "network.json"
ENTRY_FORMAT = 1


def with_defaults(cls: type, defaults: Mapping[str, Any], prefix: str = "") -> type:
    """A dataclass derived from ``cls`` whose fields named by dotted ``defaults`` keys default to
    the given values (field metadata kept); ``cls`` itself is untouched.

    Raises:
        KeyError: a key that names no field of ``cls``.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls)}
    own = {k.split(".", 1)[0] for k in defaults}
    unknown = own - set(names)
    if unknown:
        raise KeyError(f"{prefix}{sorted(unknown)[0]}: no such spec key")
    new_fields = []
    for name in sorted(own):
        old = names[name]
        nested = {k.split(".", 1)[1]: v for k, v in defaults.items() if k.startswith(name + ".")}
        if nested:
            sub = with_defaults(hints[name], nested, f"{prefix}{name}.")
            new = dataclasses.field(default_factory=sub, metadata=old.metadata)
            new_fields.append((name, sub, new))
            continue
        value = defaults[name]
        if isinstance(value, (list, dict)):
            new = dataclasses.field(default_factory=functools.partial(_json_copy, value), metadata=old.metadata)
        else:
            new = dataclasses.field(default=value, metadata=old.metadata)
        new_fields.append((name, hints[name], new))
    # A field redefined in a subclass keeps its position in the base, so the spec order is unchanged.
    return dataclasses.make_dataclass(cls.__name__, new_fields, bases=(cls,))


class PortedAction:
    """An action of a ported network: register its backbone, then run the base network's action."""

    def __init__(self, base: Network, action: str, backbone_name: str, backbone_spec: Mapping[str, Any]):
        self.base, self.action = base, action
        self.backbone_name, self.backbone_spec = backbone_name, dict(backbone_spec)

    def __call__(self, cfg: Any, ctx: ActionContext) -> ActionResult:  # the base network's config
        if self.backbone_spec:
            from foveal.nn.ported import register_ported_backbone

            register_ported_backbone(self.backbone_name, self.backbone_spec)
        return self.base.get_action(self.action)(cfg, ctx)


class PortedResolve:
    """The base network's resolve step, with the ported backbone registered first (its spec names it)."""

    def __init__(self, base: Network, backbone_name: str, backbone_spec: Mapping[str, Any]):
        self.base, self.backbone_name, self.backbone_spec = base, backbone_name, dict(backbone_spec)

    def __call__(self, cfg: Any, action: str | None = None) -> Any:  # the base network's config
        if self.backbone_spec:
            from foveal.nn.ported import register_ported_backbone

            register_ported_backbone(self.backbone_name, self.backbone_spec)
        return self.base.resolve(cfg, action) if self.base.resolve is not None else cfg


def read_entry(entry_dir: Path) -> dict[str, Any]:
    """The parsed ``network.json`` of a ported network folder.

    Raises:
        ValueError: unreadable, or of another format version.
    """
    path = entry_dir / ENTRY_FILE
    try:
        entry = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc})") from None
    if entry.get("format") != ENTRY_FORMAT or not entry.get("ported"):
        raise ValueError(f"{path}: not a ported network of format {ENTRY_FORMAT}")
    return entry


def _json_copy(value: Any) -> Any:
    """A fresh copy of a JSON-like default (lists and dicts must not be shared between configs)."""
    return json.loads(json.dumps(value))


def absolute_backbone_spec(entry: Mapping[str, Any], entry_dir: Path) -> dict[str, Any]:
    """The entry's backbone description with its paths made absolute."""
    spec = dict(entry.get("backbone") or {})
    for key in ("weights", "folder"):
        if key in spec:
            spec[key] = str((entry_dir / spec[key]).resolve())
    return spec


def ported_network(entry_dir: Path) -> Network:
    """Build the :class:`Network` a ported entry folder describes.

    Raises:
        ValueError: the entry is unreadable or names an unknown base network or spec key.
    """
    from foveal.networks.hf_task import BASES, task_network
    from foveal.networks.registry import get_network

    entry = read_entry(entry_dir)
    base_name = entry.get("base", "classification")
    base = task_network(base_name) if base_name in BASES else get_network(base_name)
    defaults = dict(entry.get("defaults", {}))
    if "model.hf_model_dir" in defaults:  # stored relative to the entry, which may have moved
        defaults["model.hf_model_dir"] = str((entry_dir / defaults["model.hf_model_dir"]).resolve())
    try:
        config_cls = with_defaults(base.config_cls, defaults)
    except KeyError as exc:
        raise ValueError(f"{entry_dir / ENTRY_FILE}: {exc.args[0]}") from None
    backbone = absolute_backbone_spec(entry, entry_dir)
    name = entry["name"]
    config_cls.model_names = (name, *getattr(base.config_cls, "model_names", ()))  # type: ignore[attr-defined]
    description = entry.get("description") or f"ported {entry.get('source', {}).get('model_type', '')} model"
    if not entry.get("verified"):
        description += " (port not verified)"
    declared = entry.get("metadata", {})
    monitoring = base.metadata.monitoring
    if declared.get("monitoring_metric"):
        monitoring = Monitoring(declared["monitoring_metric"], declared.get("monitoring_mode", "min"))
    metadata = dataclasses.replace(
        base.metadata,
        task=declared.get("task", base.metadata.task),
        automl_enabled=bool(declared.get("automl_enabled", base.metadata.automl_enabled)),
        monitoring=monitoring,
        ported=PortedFrom(
            entry_dir=str(entry_dir),
            source=entry.get("source", {}).get("path"),
            source_task=declared.get("source_task"),
        ),
    )
    # A ported network's checkpoints are its base network's: start from its own train jobs as the
    # base starts from its own, and from the base's other parents.
    start_from = tuple(
        dataclasses.replace(s, network=name) if s.network == base.name else s for s in base.start_from
    )
    return Network(
        name=name,
        config_cls=config_cls,
        actions={a: PortedAction(base, a, entry.get("backbone_name", name), backbone) for a in base.actions},
        metadata=metadata,
        description=description,
        action_sections=dict(base.action_sections),
        handoff={a: dict(rules) for a, rules in base.handoff.items()},
        checkpoint_kind=base.checkpoint_kind,
        start_from=start_from,
        start_key=base.start_key,
        resolve=PortedResolve(base, entry.get("backbone_name", name), backbone),
    )
