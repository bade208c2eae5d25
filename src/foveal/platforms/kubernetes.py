"""Kubernetes: a ``batch/v1`` Job manifest per job, applied and tracked with ``kubectl``.

The pod mounts the workspace at the same path (a PersistentVolumeClaim when
``FOVEAL_K8S_WORKSPACE_PVC`` is set, else a hostPath for single-node clusters) and runs the
prepared job by id. S3 keys come from a Secret (``foveal-s3-credentials``) by reference; the
manifest never holds a credential.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path
from typing import Any

import yaml

from foveal.platforms.runner import (
    DONE,
    ERROR,
    PENDING,
    RUNNING,
    UNKNOWN,
    Runner,
    RunnerJob,
    job_command,
)
from foveal.secrets import ENV_KEY

S3_SECRET = "foveal-s3-credentials"
KEY_SECRET = "foveal-encryption-key"  # kubectl create secret generic foveal-encryption-key --from-literal=FOVEAL_ENCRYPTION_KEY=...
_S3_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "FOVEAL_S3_ENDPOINT_URL",
)


def k8s_name(job_id: str) -> str:
    """A DNS-1123 name (lowercase alphanumerics and '-', at most 63) for job ``job_id``."""
    name = re.sub(r"[^a-z0-9-]+", "-", f"foveal-{job_id}".lower()).strip("-")
    return name[:63].rstrip("-")


class KubernetesRunner(Runner):
    platform_name = "kubernetes"

    def manifest(self, job: RunnerJob) -> dict[str, Any]:
        get = self.settings.get
        labels = {
            "app.kubernetes.io/name": "foveal",
            "foveal/job-id": k8s_name(job.job_id).removeprefix("foveal-"),
            "foveal/network": job.network,
            "foveal/action": job.action.replace("_", "-"),
        }
        workspace = str(job.workspace)
        volume: dict[str, Any] = {"name": "workspace"}
        if get("workspace_pvc"):
            volume["persistentVolumeClaim"] = {"claimName": get("workspace_pvc")}
        else:
            volume["hostPath"] = {"path": workspace, "type": "Directory"}
        env: list[dict[str, Any]] = [{"name": "FOVEAL_WORKSPACE", "value": workspace}]
        if job.needs_s3:
            env += [
                {"name": n, "valueFrom": {"secretKeyRef": {"name": S3_SECRET, "key": n, "optional": True}}}
                for n in _S3_ENV
            ]
        if job.encrypted:  # the key from a Kubernetes Secret, never the manifest
            env.append({"name": ENV_KEY, "valueFrom": {"secretKeyRef": {"name": KEY_SECRET, "key": ENV_KEY}}})
        container: dict[str, Any] = {
            "name": "foveal",
            "image": job.image,
            "command": job_command(job.job_id, job.workspace),
            "workingDir": str(job.results_dir),
            "env": env,
            "volumeMounts": [{"name": "workspace", "mountPath": workspace}],
        }
        gpus = get("gpus", "1")
        if gpus and gpus != "0":
            container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
        pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": [volume]}
        if get("image_pull_secret"):
            pod["imagePullSecrets"] = [{"name": get("image_pull_secret")}]
        return {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {
                "name": k8s_name(job.job_id),
                "namespace": get("namespace", "default"),
                "labels": labels,
            },
            "spec": {
                # A failed training is a result to look at, not something to retry blindly.
                "backoffLimit": 0,
                "ttlSecondsAfterFinished": 7 * 24 * 3600,
                "template": {"metadata": {"labels": labels}, "spec": pod},
            },
        }

    def render(self, job: RunnerJob) -> str:
        header = f"# foveal job {job.job_id}: {job.network} {job.action} (apply with kubectl apply -f)\n"
        return header + yaml.safe_dump(self.manifest(job), sort_keys=False)

    def _kubectl(self) -> list[str] | None:
        if shutil.which("kubectl") is None:
            return None
        argv = ["kubectl"]
        kubeconfig = self.settings.get("kubeconfig")
        if kubeconfig and Path(kubeconfig).expanduser().is_file():
            argv += ["--kubeconfig", str(Path(kubeconfig).expanduser())]
        if self.settings.get("context"):
            argv += ["--context", str(self.settings.get("context"))]
        return [*argv, "--namespace", self.settings.get("namespace", "default") or "default"]

    def submit_argv(self, path: Path) -> list[str] | None:
        kubectl = self._kubectl()
        return None if kubectl is None else [*kubectl, "apply", "-f", str(path), "-o", "name"]

    def manual_submit_hint(self, path: Path) -> str:
        return f"submit it with: kubectl apply -f {shlex.quote(str(path))}"

    def parse_submit(self, output: str) -> str:
        return super().parse_submit(output).removeprefix("job.batch/")

    def poll_argv(self, scheduler_id: str) -> list[list[str]]:
        return [[*(self._kubectl() or ["kubectl"]), "get", "job", scheduler_id, "-o", "json"]]

    def parse_poll(self, outputs: list[str]) -> str:
        try:
            status = json.loads(outputs[0]).get("status", {}) if outputs and outputs[0].strip() else None
        except ValueError:
            return UNKNOWN
        if status is None:
            return UNKNOWN
        if status.get("succeeded"):
            return DONE
        if status.get("failed"):
            return ERROR
        return RUNNING if status.get("active") else PENDING
