"""What a study leaves behind: trials table (CSV + JSON), plots (PNG), the best checkpoint.

Plots (matplotlib): Optuna's optimisation history (each trial's value and the best so far)
and the parameter importance; ``report.html`` shows them with the trials table. Importance comes from Optuna's
evaluators (fANOVA needs scikit-learn, PED-ANOVA does not), else from the absolute Spearman
rank correlation between each parameter and the metric, normalised to sum to 1.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import math
import shutil
from pathlib import Path
from typing import Any

from foveal.engine.checkpoint_index import select_checkpoint
from foveal.jobs.registry import JobRegistry
from foveal.jobs.report import pyplot
from foveal.networks.registry import Network
from foveal.tuning.study import counted_trials, trial_state

logger = logging.getLogger(__name__)

BEST_DIR = "best_model"
BEST_RECORD = "best_trial.json"


# ------------------------------------------------------------------------------------- table


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """One plain dict per trial, in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        duration = (
            (t.datetime_complete - t.datetime_start).total_seconds()
            if t.datetime_complete and t.datetime_start
            else None
        )
        rows.append(
            {
                "number": t.number,
                "state": trial_state(t),
                "value": t.value,
                "params": dict(t.user_attrs.get("params", {})),
                "job_id": t.user_attrs.get("job_id"),
                "results_dir": t.user_attrs.get("results_dir"),
                "epochs_reported": len(t.intermediate_values),
                "pruned_at_epoch": t.user_attrs.get("pruned_at_epoch"),
                "restart_of": t.user_attrs.get("restart_of"),
                "duration_s": round(duration, 3) if duration is not None else None,
                "error": t.user_attrs.get("error"),
            }
        )
    return rows


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = sorted({k for row in rows for k in row["params"]})
    head = [
        "number",
        "state",
        "value",
        *keys,
        "job_id",
        "epochs_reported",
        "pruned_at_epoch",
        "restart_of",
        "duration_s",
        "error",
        "results_dir",
    ]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(head)
        for row in rows:
            flat = {**row, **row["params"]}
            writer.writerow(["" if flat.get(k) is None else flat.get(k) for k in head])


def write_reports(study: Any, folder: Path, metric: str, direction: str) -> dict[str, Any]:
    """Write trials.csv, trials.json and the plots; returns kind -> path (plus ``_rows``)."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = trial_rows(study)
    out: dict[str, Any] = {
        "trials_csv": str(folder / "trials.csv"),
        "trials_json": str(folder / "trials.json"),
    }
    _write_csv(rows, folder / "trials.csv")
    payload = {"metric": metric, "direction": direction, "trials": rows}
    (folder / "trials.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    try:
        if complete:
            out["history_plot"] = str(plot_history(study, metric, direction, folder / "optimization_history.png"))
        importance = param_importance(study)
        if importance:
            out["importance_plot"] = str(plot_importance(importance, folder / "param_importance.png"))
            (folder / "param_importance.json").write_text(json.dumps(importance, indent=2), encoding="utf-8")
    except Exception as exc:  # noqa: BLE001 - a plot never costs the study its results
        logger.warning("could not draw the study plots: %s", exc)
    try:
        out["report"] = str(write_study_page(folder, study.study_name, metric, direction, rows))
    except Exception as exc:  # noqa: BLE001 - the page never costs the study its results
        logger.warning("could not write the study's report page: %s", exc)
    out["_rows"] = rows
    return out


# -------------------------------------------------------------------------------- importance


def param_importance(study: Any) -> dict[str, float]:
    """Parameter -> importance (sums to 1); empty with fewer than 3 complete trials."""
    from foveal.tuning.space import param_name

    complete = [
        t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.value is not None
    ]
    if len(complete) < 3:
        return {}
    try:
        import optuna

        evaluator = None
        if importlib.util.find_spec("sklearn") is None:
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
        if found and all(math.isfinite(v) for v in found.values()):
            return {param_name(k): float(v) for k, v in found.items()}
    except Exception as exc:  # noqa: BLE001 - fall back to the rank correlation below
        logger.info("optuna importance unavailable (%s); using rank correlation", exc)
    return _rank_importance(complete)


def _ranks(values: list[Any]) -> list[float]:
    keyed = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v) for v in values]
    try:
        order = sorted(range(len(keyed)), key=lambda i: keyed[i])
    except TypeError:
        order = sorted(range(len(keyed)), key=lambda i: str(keyed[i]))
    ranks = [0.0] * len(values)
    for rank, index in enumerate(order):
        ranks[index] = float(rank)
    return ranks


def _spearman(a: list[Any], b: list[float]) -> float:
    ra, rb = _ranks(a), _ranks(b)
    n = len(ra)
    ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return abs(cov / var) if var > 0 else 0.0


def _rank_importance(complete: list[Any]) -> dict[str, float]:
    from foveal.tuning.space import param_name

    keys = sorted({k for t in complete for k in t.params})
    values = [float(t.value) for t in complete]
    raw = {}
    for key in keys:
        pairs = [(t.params[key], v) for t, v in zip(complete, values, strict=True) if key in t.params]
        raw[param_name(key)] = (
            _spearman([p for p, _ in pairs], [v for _, v in pairs]) if len(pairs) > 2 else 0.0
        )
    total = sum(raw.values())
    return {
        k: (v / total if total > 0 else 1.0 / len(raw)) for k, v in sorted(raw.items(), key=lambda kv: -kv[1])
    }


# ------------------------------------------------------------------------------------- plots


def _best_so_far(values: list[float], maximize: bool) -> list[float]:
    out, best = [], None
    for v in values:
        best = v if best is None else (max(best, v) if maximize else min(best, v))
        out.append(best)
    return out


def plot_history(study: Any, metric: str, direction: str, path: Path) -> Path:
    """Optuna's optimisation history (each complete trial's value and the best so far)."""
    import warnings

    import optuna

    plt = pyplot()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=metric)
    fig: Any = ax.figure
    fig.set_size_inches(7, 4)
    ax.set_title(f"Optimisation history ({direction} {metric})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_importance(importance: dict[str, float], path: Path) -> Path:
    """Horizontal bars of :func:`param_importance` (the figure beside param_importance.json)."""
    plt = pyplot()
    names, values = list(importance), list(importance.values())
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(names[::-1], values[::-1])
    ax.set(xlabel="importance", title="Parameter importance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_study_page(folder: Path, name: str, metric: str, direction: str, rows: list[dict[str, Any]]) -> Path:
    """``<study>/report.html``: the best trial, the trials table, the optimisation history and the
    parameter importances, self-contained (see :mod:`foveal.jobs.report`)."""
    from foveal.jobs.report import embed_png, html_page, section, table, write_report

    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    best = None
    if complete:
        best = (max if direction == "maximize" else min)(complete, key=lambda r: float(r["value"]))
    head = {"metric": metric, "direction": direction, "trials": len(rows), "complete": len(complete)}
    if best is not None:
        head.update({"best trial": best["number"], "best value": best["value"], "best job": best["job_id"]})
    parts = [table([{"": k, "value": v} for k, v in head.items()])]
    keys = sorted({k for r in rows for k in r["params"]})
    trials = [
        {"trial": r["number"], "state": r["state"], "value": r["value"], **r["params"],
         "epochs": r["epochs_reported"], "seconds": r["duration_s"], "job": r["job_id"], "error": r["error"]}
        for r in rows
    ]  # fmt: skip
    parts.append(section("Trials", table(trials, ["trial", "state", "value", *keys, "epochs", "seconds", "job", "error"])))
    for file, title in (("optimization_history.png", "Optimisation history"), ("param_importance.png", "Parameter importance")):
        if (folder / file).is_file():
            parts.append(section(title, embed_png((folder / file).read_bytes(), file)))
        else:
            parts.append(section(title, '<p class="muted">not enough complete trials to draw it</p>'))
    if best is not None and best.get("results_dir") and (Path(best["results_dir"]) / "report.html").is_file():
        link = Path(best["results_dir"]) / "report.html"
        parts.append(section("Best trial", f'<p><a href="{link.as_uri()}">its own report</a> ({link})</p>'))
    return write_report(folder / "report.html", html_page(f"AutoML study {name}", parts))


def copy_best_checkpoint(network: Network, registry: JobRegistry, best: Any, folder: Path) -> Path | None:
    """Copy the best trial's last checkpoint to ``<study>/best_model/`` (replacing an older best)."""
    job_id = best.user_attrs.get("job_id")
    if not job_id or not registry.exists(job_id):
        return None
    job = registry.get(job_id)
    target_dir = folder / BEST_DIR
    record_path = target_dir / BEST_RECORD
    try:
        source = select_checkpoint(job.results_dir, "latest", network.checkpoint_kind)
    except Exception as exc:  # noqa: BLE001 - e.g. deleted by hand; the study result still stands
        logger.warning("best trial %d: no checkpoint to keep (%s)", best.number, exc)
        return None
    target = target_dir / source.name
    if record_path.is_file() and target.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        if record.get("job_id") == job_id and record.get("source") == str(source):
            return target
    if target_dir.exists():
        shutil.rmtree(target_dir)
    target_dir.mkdir(parents=True)
    tmp = target_dir / (source.name + ".tmp")
    shutil.copy2(source, tmp)
    tmp.replace(target)
    record = {
        "trial": best.number,
        "value": best.value,
        "job_id": job_id,
        "source": str(source),
        "params": best.user_attrs.get("params", {}),
    }
    record_path.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    logger.info("best trial %d: checkpoint kept in %s", best.number, target)
    return target


def delete_intermediate_checkpoints(study: Any, best: Any, running: set[int]) -> int:
    """Remove the ``*.pth`` files of finished trials other than the best; returns how many.

    Interrupted and running trials keep theirs: ``--resume`` continues them from there.
    """
    removed = 0
    for trial in counted_trials(study):
        if trial.number == best.number or trial.number in running:
            continue
        folder = trial.user_attrs.get("results_dir")
        if not folder or not Path(folder).is_dir():
            continue
        for path in Path(folder).rglob("*.pth"):
            if path.is_symlink() or path.is_file():
                path.unlink()
                removed += 1
    if removed:
        logger.info("deleted %d intermediate checkpoint file(s)", removed)
    return removed
