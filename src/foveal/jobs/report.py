"""A self-contained HTML report of a job: ``<results_dir>/report.html``.

What it shows, all from the job's own files (nothing is recomputed):

- the job (network, action, status, times, message) and its last KPIs;
- the spec's differences from the network's defaults (``experiment.yaml`` against the schema);
- metric curves per epoch (``status.json``'s RUNNING lines) and per step (the TensorBoard
  events the trainer writes), grouped: losses, validation metrics, the online kNN and collapse
  monitors of self-supervised runs (with ``ln K`` beside the teacher entropy), schedules;
- the pictures the job and its child jobs wrote (MAE reconstruction grids, NVDINOv2 PCA feature
  maps, confusion matrices, overlays), embedded.

Figures are drawn with matplotlib (Agg) into PNGs embedded as ``data:`` URIs, so the page opens
from anywhere without a server. Other pages (an AutoML study, a workflow) are built with
:func:`html_page` and :func:`figure` from here.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from foveal.engine.status import read_status
from foveal.engine.tracking import flatten

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
MAX_PICTURES = 12  # pictures embedded per page
MAX_PICTURE_BYTES = 3 * 1024 * 1024
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
table{border-collapse:collapse;font-size:.9rem;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;
text-align:left;vertical-align:top}th{background:#f5f5f5}code{background:#f5f5f5;padding:0 .2rem}
figure{display:inline-block;margin:.5rem;vertical-align:top;max-width:100%}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.8rem;color:#555}.muted{color:#777}.warn{color:#a40}
"""


# ------------------------------------------------------------------------------ page parts


def html_page(title: str, sections: Iterable[str]) -> str:
    """A whole page: ``title`` and the given HTML sections, styles inline."""
    body = "\n".join(sections)
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def section(title: str, content: str) -> str:
    return f"<h2>{html.escape(title)}</h2>\n{content}"


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return '<p class="muted">none</p>'
    columns = list(columns or dict.fromkeys(k for row in rows for k in row))
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(row.get(c)))}</td>" for c in columns) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return str(value)


def embed_png(data: bytes, caption: str, alt: str | None = None) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img src="{uri}" alt="{html.escape(alt or caption)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def figure(draw: Any, caption: str, size: tuple[float, float] = (6.4, 3.6)) -> str:
    """``draw(ax)`` on a new matplotlib figure, embedded as a PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
        draw(ax)
        fig.tight_layout()
        return embed_figure(fig, caption)
    finally:
        plt.close(fig)


def embed_figure(fig: Any, caption: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return embed_png(buffer.getvalue(), caption)


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------ job data


def epoch_curves(status_lines: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """metric -> [(epoch, value)] from the RUNNING lines of a status file (the last line of an
    epoch wins, so a resumed run's repeated epoch keeps its newest value)."""
    by_metric: dict[str, dict[int, float]] = {}
    for line in status_lines:
        epoch, kpi = line.get("epoch"), line.get("kpi")
        if line.get("status") != "RUNNING" or not isinstance(epoch, int) or not isinstance(kpi, dict):
            continue
        for name, value in kpi.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                by_metric.setdefault(name, {})[epoch] = float(value)
    return {name: sorted(points.items()) for name, points in sorted(by_metric.items())}


def step_curves(results_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] from the TensorBoard event files under ``results_dir``."""
    files = sorted(results_dir.glob("tensorboard/**/events.out.tfevents.*"))
    if not files:
        return {}
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:  # tensorboard is a dependency; a broken install only loses these curves
        return {}
    curves: dict[str, dict[int, float]] = {}
    for path in files:
        try:
            acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in acc.Tags().get("scalars", []):
                for event in acc.Scalars(tag):
                    if math.isfinite(event.value):
                        curves.setdefault(tag, {})[int(event.step)] = float(event.value)
        except Exception as exc:  # noqa: BLE001 - a truncated event file loses its curves only
            logger.warning("report: could not read %s: %s", path, exc)
    return {tag: sorted(points.items()) for tag, points in sorted(curves.items())}


def spec_differences(spec: Mapping[str, Any], defaults: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``[{"key", "value", "default"}]`` for every leaf of ``spec`` that differs from ``defaults``."""
    flat_spec, flat_default = flatten(spec), flatten(defaults)
    keys = sorted(set(flat_spec) | set(flat_default))
    return [
        {"key": k, "value": flat_spec.get(k), "default": flat_default.get(k)}
        for k in keys
        if flat_spec.get(k) != flat_default.get(k)
    ]


def pictures(folders: Sequence[Path], limit: int = MAX_PICTURES) -> list[tuple[Path, Path]]:
    """``(root, file)`` of the pictures under ``folders``, newest job first, at most ``limit``.

    Named figures (reconstruction grids, PCA maps, confusion matrices) come before per-image
    outputs (overlays, masks), and at most 4 pictures come from one subfolder."""
    found: list[tuple[Path, Path]] = []
    for root in folders:
        files = [p for p in sorted(root.rglob("*")) if p.suffix.lower() in PICTURE_SUFFIXES and p.is_file()]
        files = [p for p in files if p.stat().st_size <= MAX_PICTURE_BYTES]
        files.sort(key=lambda p: (len(p.relative_to(root).parts), str(p)))
        per_folder: dict[Path, int] = {}
        for path in files:
            per_folder[path.parent] = per_folder.get(path.parent, 0) + 1
            if per_folder[path.parent] <= 4:
                found.append((root, path))
    return found[:limit]


# ------------------------------------------------------------------------------ curves


def _group(name: str) -> str:
    if name in ("lr", "wd", "teacher_temp") or name.startswith(("lr-", "lr_")):
        return "schedules"
    if any(k in name for k in ("knn", "feature_std", "effective_rank", "teacher_entropy", "probe")):
        return "learning monitors (online kNN and collapse)"
    if "loss" in name:
        return "losses"
    return "metrics"


def curve_figures(
    curves: Mapping[str, Sequence[tuple[int, float]]], x_label: str, references: Mapping[str, float] | None = None
) -> list[str]:
    """One figure per group of curves (one axis per curve within the group)."""
    groups: dict[str, list[str]] = {}
    for name, points in curves.items():
        if len(points) >= 1:
            groups.setdefault(_group(name), []).append(name)
    out = []
    plt = pyplot()
    for group, names in groups.items():
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), dpi=100, squeeze=False)
        try:
            for ax, name in zip(axes.flat, names, strict=False):
                xs, ys = zip(*curves[name], strict=True)
                ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, markersize=3)
                reference = (references or {}).get(name)
                if reference is not None:
                    ax.axhline(reference, color="#a40", linestyle="--", linewidth=1)
                    ax.text(xs[0], reference, f" {reference:.3g}", color="#a40", va="bottom", fontsize=8)
                ax.set_title(name, fontsize=9)
                ax.set_xlabel(x_label, fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
            for ax in list(axes.flat)[len(names) :]:
                ax.axis("off")
            fig.tight_layout()
            out.append(embed_figure(fig, f"{group}, per {x_label}"))
        finally:
            plt.close(fig)
    return out


# ------------------------------------------------------------------------------ the page


def job_report_html(
    results_dir: Path,
    *,
    job: Any = None,
    defaults: Mapping[str, Any] | None = None,
    children: Sequence[Any] = (),
    references: Mapping[str, float] | None = None,
) -> str:
    """The HTML of a job's report (see the module docstring).

    Args:
        results_dir: the job's results folder.
        job: its registry row (``foveal.jobs.Job``), for the header; None: from status.json only.
        defaults: the network's default spec (plain data), for the differences table.
        children: registry rows of the jobs started from this one (their pictures and KPIs).
        references: metric -> a reference line on its curve (``teacher_entropy``: ``ln K``).
    """
    import yaml

    status = read_status(results_dir / "status.json")
    title = f"{job.network} {job.action} — {job.id}" if job is not None else f"job report — {results_dir.name}"
    parts = []
    if job is not None:
        head = {
            "network": job.network,
            "action": job.action,
            "status": getattr(job.status, "value", job.status),
            "parent": job.parent_id,
            "created": job.created_at,
            "started": job.started_at,
            "finished": job.finished_at,
            "results": job.results_dir,
            "message": job.message,
        }
        parts.append(table([{"": k, "value": v} for k, v in head.items() if v]))
    final = [line for line in status if line.get("kpi")]
    kpis = dict(job.kpis) if job is not None and job.kpis else (final[-1]["kpi"] if final else {})
    parts.append(section("KPIs", table([{"metric": k, "value": v} for k, v in sorted(kpis.items())])))
    warnings = [line for line in status if line.get("verbosity") in ("WARNING", "ERROR")]
    if warnings:
        parts.append(section("Warnings", table(warnings, ["date", "time", "status", "message"])))
    spec_file = results_dir / "experiment.yaml"
    if spec_file.is_file() and defaults is not None:
        try:
            spec = yaml.safe_load(spec_file.read_text()) or {}
            rows = spec_differences(spec, defaults)
            parts.append(section(f"Spec: {len(rows)} value(s) differ from the defaults", table(rows)))
        except yaml.YAMLError as exc:
            parts.append(section("Spec", f'<p class="warn">experiment.yaml does not parse: {html.escape(str(exc))}</p>'))
    per_epoch = epoch_curves(status)
    if per_epoch:
        parts.append(section("Curves per epoch", "\n".join(curve_figures(per_epoch, "epoch", references))))
    per_step = {k: v for k, v in step_curves(results_dir).items() if len(v) > 1 and k != "epoch"}
    if per_step:
        parts.append(section("Curves per step (TensorBoard logs)", "\n".join(curve_figures(per_step, "step", references))))
    if not per_epoch and not per_step:
        parts.append(section("Curves", '<p class="muted">this job logged no metric curves</p>'))
    folders = [results_dir] + [Path(c.results_dir) for c in children if c.results_dir]
    matrices = [m for m in (confusion_figure(f) for f in folders) if m]
    if matrices:
        parts.append(section("Confusion matrix", "\n".join(matrices)))
    found = pictures([f for f in folders if f.is_dir()])
    if found:
        figures = []
        for root, path in found:
            caption = str(path.relative_to(root)) if root == results_dir else f"{root.name}/{path.relative_to(root)}"
            figures.append(_picture(path, caption))
        parts.append(section("Pictures (this job and its child jobs)", "\n".join(figures)))
    if children:
        rows = [
            {"job": c.id, "action": c.action, "status": getattr(c.status, "value", c.status), "kpis": c.kpis}
            for c in children
        ]
        parts.append(section("Child jobs", table(rows)))
    return html_page(title, parts)


def confusion_figure(folder: Path) -> str:
    """The confusion matrix of an evaluate job's ``results.json`` (rows: true class), drawn; ""
    when the folder has none."""
    try:
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        matrix = results["confusion_matrix"]
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    if not (isinstance(matrix, list) and matrix and all(isinstance(r, list) for r in matrix)):
        return ""
    classes = results.get("classes") or list(results.get("per_class") or []) or [str(i) for i in range(len(matrix))]
    n = len(matrix)
    if len(classes) != n:
        classes = [str(i) for i in range(n)]

    def draw(ax: Any) -> None:
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(n), classes, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        if n <= 20:
            peak = max(max(r) for r in matrix) or 1
            for i, row in enumerate(matrix):
                for j, v in enumerate(row):
                    ax.text(j, i, str(v), ha="center", va="center", fontsize=7, color="white" if v > peak / 2 else "black")

    side = min(10.0, 2.5 + 0.4 * n)
    return figure(draw, f"{folder.name}/results.json: confusion matrix ({n} classes)", size=(side, side))


def _picture(path: Path, caption: str) -> str:
    data = path.read_bytes()
    if path.suffix.lower() == ".png":
        return embed_png(data, caption)
    uri = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    return f'<figure><img src="{uri}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'


def write_report(path: Path, page: str) -> Path:
    """Write ``page`` to ``path`` atomically (a reader never sees half a page)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(path)
    return path


# ------------------------------------------------------------------------------ a job by id


def write_job_report(job: Any, registry: Any) -> Path:
    """Write ``<results_dir>/report.html`` of a registry job and return its path."""
    import yaml

    from foveal.networks.registry import get_network
    from foveal.spec import default_dict

    results_dir = Path(job.results_dir)
    defaults: dict[str, Any] | None = None
    try:
        defaults = default_dict(get_network(job.network).config_cls)
    except KeyError:  # a ported network no longer in this workspace: no differences table
        logger.info("report: network %s is not registered; the spec's differences are left out", job.network)
    references: dict[str, float] = {}
    try:
        spec = yaml.safe_load((results_dir / "experiment.yaml").read_text()) or {}
        prototypes = (spec.get("train") or {}).get("num_prototypes")
        if isinstance(prototypes, int) and prototypes > 1:  # a DINO head: a uniform teacher is at ln K
            references["teacher_entropy"] = math.log(prototypes)
    except (OSError, yaml.YAMLError, AttributeError):
        pass
    children = [j for j in registry.list() if j.parent_id == job.id]
    page = job_report_html(results_dir, job=job, defaults=defaults, children=children, references=references)
    return write_report(results_dir / REPORT_FILE, page)
