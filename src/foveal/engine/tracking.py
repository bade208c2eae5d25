"""Experiment trackers of one job: Weights & Biases (TAO's ``wandb`` section) and MLflow.

A job opens one run per tracker. The run records the resolved spec (secrets as fingerprints,
as everywhere), the metrics Lightning logs during training (per logging interval and per epoch),
and the job's final KPIs with its outcome. Training hands :meth:`Tracking.loggers` to the
Trainer; actions without a Trainer (evaluate, export...) get a run with the spec and the KPIs.

* W&B: online when an API key is configured (``WANDB_API_KEY`` or ``wandb login``), else offline
  under ``<results_dir>/wandb`` for a later ``wandb sync``; ``WANDB_MODE`` wins when set.
* MLflow: ``mlflow.tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a local SQLite store in
  the workspace (MLflow 3 keeps its plain-folder store for migration only).

The run ids are kept in ``<results_dir>/tracking.json``, so a resumed job continues its runs.
A tracker whose package is missing is one warning line, and the job runs on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import netrc
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foveal import secrets
from foveal.errors import UsageError
from foveal.spec.common import MLflowConfig, WandBConfig

logger = logging.getLogger(__name__)
STATE_FILE = "tracking.json"
_WANDB_HOST = "api.wandb.ai"


def wandb_has_key() -> bool:
    """Whether W&B can log online: an API key in the environment or in ``~/.netrc``."""
    if os.environ.get("WANDB_API_KEY", "").strip():
        return True
    try:
        return netrc.netrc().authenticators(_WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Trackers announce database migrations and run folders at INFO; Foveal says what matters."""
    saved = [(n, logging.getLogger(n).level) for n in names]
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        yield
    finally:
        for name, level in saved:
            logging.getLogger(name).setLevel(level)


def shown_uri(uri: str) -> str:
    """A URI as logs and files may show it: credentials (``user:password@``) masked."""
    return secrets.mask_uri_credentials(uri)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class Tracking:
    """The trackers one job logs to (none when both sections are off).

    Args:
        spec: the resolved spec as plain data (what ``experiment.yaml`` holds).
        wandb, mlflow: the spec's sections.
        results_dir, network, action, job_id: the job.
        workspace: the workspace root (home of the default MLflow store).
    """

    spec: Mapping[str, Any]
    wandb: WandBConfig | None
    mlflow: MLflowConfig | None
    results_dir: Path
    network: str
    action: str
    job_id: str
    workspace: Path
    _wandb_run: Any = field(default=None, init=False, repr=False)
    _mlflow: tuple[Any, str] | None = field(default=None, init=False, repr=False)
    _started: bool = field(default=False, init=False, repr=False)

    @classmethod
    def for_config(
        cls, cfg: Any, spec: Mapping[str, Any], *, results_dir: Path, network: str, action: str, job_id: str,
        workspace: Path,
    ) -> Tracking:
        wandb = getattr(cfg, "wandb", None)
        mlflow = getattr(cfg, "mlflow", None)
        return cls(
            spec,
            wandb if isinstance(wandb, WandBConfig) else None,
            mlflow if isinstance(mlflow, MLflowConfig) else None,
            Path(results_dir),
            network,
            action,
            job_id,
            Path(workspace),
        )

    @property
    def enabled(self) -> bool:
        return bool((self.wandb and self.wandb.enable) or (self.mlflow and self.mlflow.enable))

    # ------------------------------------------------------------------------------ state

    def _state(self) -> dict[str, Any]:
        path = self.results_dir / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self, **entries: Any) -> None:
        state = self._state()
        state.update(entries)
        self.results_dir.mkdir(parents=True, exist_ok=True)
        path = self.results_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
        tmp.replace(path)

    # ------------------------------------------------------------------------------ start

    def start(self) -> None:
        """Open the runs (once)."""
        if self._started:
            return
        self._started = True
        if self.wandb is not None and self.wandb.enable:
            try:
                self._wandb_run = self._start_wandb(self.wandb)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - W&B raises many kinds (network, auth, settings)
                raise UsageError(f"wandb: cannot start the Weights & Biases run: {_first_line(exc)}") from exc
        if self.mlflow is not None and self.mlflow.enable:
            try:
                self._mlflow = self._start_mlflow(self.mlflow)
            except Exception as exc:  # noqa: BLE001 - a bad URI, an unreachable server, a locked store
                uri = shown_uri(self.mlflow_uri(self.mlflow))
                raise UsageError(
                    f"mlflow.tracking_uri: cannot open the MLflow store {uri}: {_first_line(exc)} (check the "
                    "URI, or leave it empty for the workspace's local store)"
                ) from exc

    def _start_wandb(self, section: WandBConfig) -> Any:
        try:
            import wandb
        except ImportError:
            logger.warning(
                "wandb.enable is true but the wandb package is not installed; this run is not logged to "
                "Weights & Biases (pip install 'foveal[wandb]')"
            )
            return None
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_key() else "offline")
        run_id = section.run_id or self._state().get("wandb_run_id")
        with _quiet("wandb"):
            run = wandb.init(
                project=section.project or None,
                entity=section.entity or None,
                group=section.group or None,
                tags=list(section.tags) or None,
                name=f"{section.name} {self.action} {self.job_id}".strip(),
                id=run_id or None,
                resume="allow" if run_id else None,
                reinit="create_new" if section.reinit else None,
                save_code=section.save_code,
                sync_tensorboard=section.sync_tensorboard,
                dir=str(self.results_dir),
                mode=mode,  # type: ignore[arg-type]  # WANDB_MODE is the user's, checked by wandb
                config={"network": self.network, "action": self.action, "job_id": self.job_id, **self.spec},
                settings=wandb.Settings(silent=True, console="off"),
            )
        self._save_state(wandb_run_id=run.id, wandb_mode=mode, wandb_dir=str(Path(run.dir).parent))
        where = f"offline in {Path(run.dir).parent} (wandb sync to upload)" if mode == "offline" else run.url
        logger.info("logging to Weights & Biases run %s: %s", run.id, where)
        return run

    def mlflow_uri(self, section: MLflowConfig) -> str:
        if section.tracking_uri:
            return section.tracking_uri
        env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
        return env or f"sqlite:///{(self.workspace / 'mlflow.db').resolve()}"

    def _start_mlflow(self, section: MLflowConfig) -> tuple[Any, str] | None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            logger.warning(
                "mlflow.enable is true but the mlflow package is not installed; this run is not logged to "
                "MLflow (pip install 'foveal[mlflow]')"
            )
            return None
        uri = self.mlflow_uri(section)
        with _quiet("mlflow", "alembic"):
            client = MlflowClient(uri)
            run_id = self._state().get("mlflow_run_id")
            if run_id is None:
                experiment = client.get_experiment_by_name(section.experiment_name)
                experiment_id = (
                    experiment.experiment_id
                    if experiment is not None
                    else client.create_experiment(section.experiment_name)
                )
                tags = {
                    "foveal.network": self.network,
                    "foveal.action": self.action,
                    "foveal.job_id": self.job_id,
                    **{str(k): str(v) for k, v in section.tags.items()},
                }
                run = client.create_run(
                    experiment_id,
                    run_name=section.run_name or f"{self.network} {self.action} {self.job_id}",
                    tags=tags,
                )
                run_id = run.info.run_id
                self._log_mlflow_params(client, run_id)
            self._save_state(mlflow_run_id=run_id, mlflow_tracking_uri=shown_uri(uri))
        logger.info("logging to MLflow run %s at %s", run_id, shown_uri(uri))
        return client, run_id

    def _log_mlflow_params(self, client: Any, run_id: str) -> None:
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flatten(self.spec).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            client.log_batch(run_id, params=params[i : i + 100])

    # ----------------------------------------------------------------------------- loggers

    def loggers(self) -> list[Any]:
        """Lightning loggers writing the training metrics into the open runs."""
        self.start()
        out: list[Any] = []
        if self._wandb_run is not None:
            from lightning.pytorch.loggers import WandbLogger

            out.append(WandbLogger(experiment=self._wandb_run, log_model=False))
        if self._mlflow is not None:
            from lightning.pytorch.loggers import MLFlowLogger

            client, run_id = self._mlflow
            assert self.mlflow is not None
            out.append(
                MLFlowLogger(
                    experiment_name=self.mlflow.experiment_name,
                    tracking_uri=self.mlflow_uri(self.mlflow),
                    run_id=run_id,
                    log_model=False,
                )
            )
        return out

    # ------------------------------------------------------------------------------ finish

    def finish(self, kpis: Mapping[str, float] | None, *, succeeded: bool, message: str = "") -> None:
        """Record the job's final KPIs and outcome, and close the runs."""
        if not self.enabled or (not succeeded and not self._started):
            return  # a job that failed before logging anything opens no run just to say so
        self.start()
        final = {f"final/{k}": float(v) for k, v in (kpis or {}).items() if isinstance(v, (int, float))}
        run = self._wandb_run
        if run is not None:
            with _quiet("wandb"):
                run.summary.update({**final, "status": "SUCCESS" if succeeded else "FAILURE", "message": message})
                run.finish(exit_code=0 if succeeded else 1)
            self._wandb_run = None
        if self._mlflow is not None:
            client, run_id = self._mlflow
            with _quiet("mlflow", "alembic"):
                for key, value in final.items():
                    client.log_metric(run_id, key, value)
                if message:
                    client.set_tag(run_id, "foveal.message", message[:5000])
                client.set_terminated(run_id, "FINISHED" if succeeded else "FAILED")
            self._mlflow = None
