"""Generate the reference pages at build time (mkdocs-gen-files runs this; nothing here is
written by hand): one spec reference per network from its typed schema, the network's facts
from its registry descriptor, and the CLI reference from the typer app."""

from __future__ import annotations

import io
from typing import Any

import mkdocs_gen_files
import typer

from foveal.cli.main import app
from foveal.networks.registry import ACTIONS, list_networks
from foveal.spec import default_dict
from foveal.spec.fields import field_meta, is_section_type, resolved_fields, type_name
from foveal.tuning.space import build_space

BUILTINS = ("nvdinov2", "mae", "classification")


def _cell(value: Any) -> str:
    """Text for a table cell: no line breaks, and Markdown's and HTML's special characters as text."""
    text = "" if value is None else str(value)
    for old, new in (("|", "\\|"), ("\n", " "), ("[", "\\["), ("]", "\\]"), ("<", "&lt;"), (">", "&gt;")):
        text = text.replace(old, new)
    return text


def _code(value: Any) -> str:
    """A value as inline code in a table cell (code spans take brackets and angles as they are)."""
    if value in (None, ""):
        return ""
    return "`" + str(value).replace("|", "\\|").replace("\n", " ") + "`"


def _range(meta: dict[str, Any]) -> str:
    if meta.get("valid_options"):
        return ", ".join(f"`{o}`" for o in meta["valid_options"])
    lo, hi = meta.get("valid_min"), meta.get("valid_max")
    if lo is None and hi is None:
        return ""
    return f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"


def _required(meta: dict[str, Any]) -> str:
    required = meta.get("required")
    if required is True:
        return "every action"
    return ", ".join(required) if required else ""


def _automl_ranges(network: Any) -> dict[str, str]:
    try:
        space = build_space(network)
    except Exception:  # noqa: BLE001 - a network without AutoML parameters
        return {}
    return {p.key: p.describe().removeprefix(p.key + " ") for p in space.params}


def _rows(cls: type, defaults: dict[str, Any], prefix: str, automl: dict[str, str]) -> list[str]:
    rows = []
    for f, tp in resolved_fields(cls):
        key = f"{prefix}{f.name}"
        meta = field_meta(f)
        if is_section_type(tp):
            rows.append(f"| **`{key}`** | section | | | | | {_cell(meta.get('description'))} |")
            rows += _rows(tp, defaults.get(f.name) or {}, key + ".", automl)
            continue
        rows.append(
            f"| `{key}` | {_cell(type_name(tp))} | {_code(defaults.get(f.name))} | {_range(meta)} | "
            f"{_required(meta)} | {_cell(automl.get(key, ''))} | {_cell(meta.get('description'))} |"
        )
    return rows


def spec_page(network: Any) -> str:
    meta = network.metadata
    automl = _automl_ranges(network)
    lines = [
        f"# `{network.name}` spec reference",
        "",
        f"{network.description} Generated from the typed schema "
        f"(`{network.config_cls.__module__}.{network.config_cls.__name__}`) when the site is built.",
        "",
        "## The network",
        "",
        f"- **Actions**: {', '.join(f'`{a}`' for a in ACTIONS if a in network.actions)}",
        f"- **Task**: {meta.task}; **AutoML**: {'enabled' if meta.automl_enabled else 'disabled'}, ranking by "
        f"`{meta.monitoring.metric}` ({meta.monitoring.mode})"
        + (f", `{meta.monitoring.fallback}` without validation data" if meta.monitoring.fallback else "")
        + "".join(f"; `train.stage={s}`: `{m}` ({d})" for s, (m, d) in meta.monitoring.by_stage.items()),
        f"- **Child jobs take** the parent's `{network.checkpoint_kind}` checkpoint; a train job starts from: "
        + (
            ", ".join(
                f"a `{s.network}` train job{(' (train.stage=' + '/'.join(s.stages) + ')') if s.stages else ''}"
                f" → `{s.key}` ({s.kind})"
                for s in network.start_from
            )
            or "no parent"
        ),
        "",
        "| action | dataset key | labeled | required | expected files |",
        "|---|---|---|---|---|",
    ]
    for action, needs in meta.dataset_requirements.items():
        for need in needs:
            labeled = "yes" if need.labeled else ("when " + ", ".join(f"{k}={v}" for k, v in need.labeled_if.items()) if need.labeled_if else "no")
            lines.append(
                f"| {action} | `{need.key}` | {labeled} | {'yes' if need.required else 'no'} | {_cell(need.expected_files)} |"
            )
    lines += [
        "",
        "## Keys",
        "",
        "Every key of every action's spec: its type, default, range or options, the actions that "
        "require it, the range AutoML searches by default, and what it means. Key names are "
        "TAO's where TAO has one.",
        "",
        "| key | type | default | range / options | required for | AutoML default range | description |",
        "|---|---|---|---|---|---|---|",
        *_rows(network.config_cls, default_dict(network.config_cls), "", automl),
        "",
    ]
    return "\n".join(lines)


def _param_row(param: Any) -> str:
    if param.param_type_name == "argument":
        name = f"`{(param.metavar or param.name).upper()}`"
        kind = "argument"
    else:
        name = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
        kind = "flag" if getattr(param, "is_flag", False) else "value"
    default = param.default if param.default not in (None, (), [], False) and not callable(param.default) else ""
    default = getattr(default, "value", default)  # an Enum choice
    help_text = getattr(param, "help", "") or ""
    return f"| {name} | {kind} | {_code(default)} | {_cell(help_text)} |"


def _command_doc(command: Any, path: str, out: io.StringIO, depth: int) -> None:
    if command.hidden:
        return
    out.write(f"{'#' * min(depth, 4)} `{path}`\n\n")
    if command.help:
        out.write(command.help.strip() + "\n\n")
    ctx = command.context_class(command, info_name=path)  # typer vendors its own click
    out.write(f"```\n{command.get_usage(ctx)}\n```\n\n")
    params = [p for p in command.params if p.name != "help"]
    if params:
        out.write("| parameter | type | default | help |\n|---|---|---|---|\n")
        out.write("\n".join(_param_row(p) for p in params) + "\n\n")
    if hasattr(command, "commands"):  # a group
        for name in sorted(command.commands):
            _command_doc(command.commands[name], f"{path} {name}", out, depth + 1)


def cli_page() -> str:
    out = io.StringIO()
    out.write(
        "# CLI reference\n\nGenerated from the `foveal` command itself when the site is built. Every "
        "network has the same five action commands (`train`, `evaluate`, `inference`, `export`, "
        "`gen_trt_engine`); the `mae` ones are shown, the others take the same options.\n\n"
    )
    _command_doc(typer.main.get_command(app), "foveal", out, 2)
    text = out.getvalue()
    for other in ("nvdinov2", "classification"):  # identical to mae's: documented once
        start = text.find(f"\n### `foveal {other}`")
        end = text.find("\n### `foveal ", start + 1)
        if start >= 0:
            text = text[:start] + (text[end:] if end >= 0 else "\n")
    return text


for network in list_networks():
    if network.name in BUILTINS:
        with mkdocs_gen_files.open(f"reference/spec/{network.name}.md", "w") as page:
            page.write(spec_page(network))

with mkdocs_gen_files.open("reference/cli.md", "w") as page:
    page.write(cli_page())
