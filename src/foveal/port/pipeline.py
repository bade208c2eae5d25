"""The port command's library function: four phases, one report, an idempotent entry."""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

from foveal.errors import PortFailedError, PortSourceError
from foveal.jobs.workspace import Workspace
from foveal.networks.ported import ENTRY_FILE
from foveal.networks.registry import WORKSPACE_NETWORKS_DIR
from foveal.port.report import REPORT_FILE, PortReport

logger = logging.getLogger(__name__)

NAME_RE = re.compile(r"[a-z][a-z0-9_]{1,47}")
HUB_ID_RE = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
_HUB_FILES = ["config.json", "preprocessor_config.json", "*.safetensors", "*.json", "README.md"]


def entry_dir(ws: Workspace, name: str) -> Path:
    return ws.root / WORKSPACE_NETWORKS_DIR / name


def check_name(name: str) -> None:
    """A new network name: lowercase identifier, not a built-in network or backbone."""
    from foveal.networks.registry import get_network

    if not NAME_RE.fullmatch(name):
        raise PortSourceError(
            f"--name {name!r}: expected lowercase letters, digits and '_' (2-48 chars, a letter first), "
            "e.g. my_vit"
        )
    try:
        existing = get_network(name)
    except KeyError:
        existing = None
    if existing is not None and existing.metadata.ported is None:
        raise PortSourceError(f"--name {name!r} is a built-in network; choose another name")
    from foveal.nn.registry import _BACKBONES

    if name in _BACKBONES and getattr(_BACKBONES[name], "ported_spec", None) is None:
        raise PortSourceError(f"--name {name!r} is a built-in backbone; choose another name")


def resolve_source(source: str, ws: Workspace) -> Path:
    """A local model folder, or a hub id downloaded into the workspace cache where the hub is
    reachable (config, preprocessor config and safetensors weights only)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path.resolve()
    if path.exists():
        raise PortSourceError(
            f"{source}: a file; expected a model folder (config.json + weights) or a hub id"
        )
    if not HUB_ID_RE.fullmatch(source):
        raise PortSourceError(f"{source}: no such folder; expected a model folder or a hub id like org/model")
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(source, cache_dir=str(ws.cache_dir / "hf"), allow_patterns=_HUB_FILES)
    except Exception as exc:  # noqa: BLE001 - offline, unknown repo, gated: all one line
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PortSourceError(
            f"{source}: not a local folder, and the Hugging Face hub did not give it ({line}); "
            "download it elsewhere and pass the folder"
        ) from None
    return Path(folder)


def _existing(folder: Path, fingerprint: str, force: bool) -> tuple[PortReport | None, bool]:
    """(the previous report when an identical verified port exists, whether the folder must be
    cleared before this port writes). Nothing is removed here: a port refused in phase 1 must
    leave the previous entry intact.

    Raises:
        PortSourceError: another port holds the name and ``force`` is off.
    """
    entry_file = folder / ENTRY_FILE
    if not entry_file.is_file():
        if folder.exists() and not force and not (folder / REPORT_FILE).is_file() and any(folder.iterdir()):
            raise PortSourceError(f"{folder} exists but holds no {ENTRY_FILE}; remove it or use --force")
        return None, folder.exists()
    document = json.loads(entry_file.read_text(encoding="utf-8"))
    if not force:
        if document.get("fingerprint") == fingerprint and document.get("verified"):
            report = PortReport.read(folder / REPORT_FILE)
            report.status = "unchanged"
            return report, False
        if document.get("fingerprint") != fingerprint:
            raise PortSourceError(
                f"network {folder.name!r} already exists (ported from {document['source']['path']}); "
                "use --force to regenerate it or choose another --name"
            )
    return None, True


def remove_entry(folder: Path) -> None:
    from foveal.networks.registry import unregister_network
    from foveal.nn.ported import unregister_ported_backbone

    unregister_network(folder.name)
    unregister_ported_backbone(folder.name)
    shutil.rmtree(folder)


def _phase_inspect(report: PortReport, folder: Path) -> Any:
    from foveal.port.inspect import inspect_folder
    from foveal.port.mapping import sanity_export

    info = inspect_folder(folder)  # PortSourceError propagates: exit 2, nothing written
    w = info.weights
    report.add(
        "inspect",
        "pass",
        f"{info.architecture} ({info.model_type}), task {info.task}",
        {"image_size": info.image_size, "num_labels": info.num_labels, "num_params": w["num_params"],
         "num_tensors": w["num_tensors"], "dtypes": ",".join(w["dtypes"])},
    )  # fmt: skip
    sanity = sanity_export(info)
    status = "pass" if sanity["passed"] else "warn"
    message = (
        f"untouched model exports ({sanity['exporter']} exporter)" if sanity["passed"] else sanity["reason"]
    )
    report.add("inspect.onnx_sanity", status, message, {"max_abs_diff": sanity["max_abs_diff"]})
    return info


def _phase_map(report: PortReport, info: Any, folder: Path, prefer_native: bool) -> Any:
    from foveal.port.mapping import PARITY_ATOL, map_source

    try:
        mapped = map_source(info, folder, prefer_native=prefer_native)
    except Exception as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        report.add("map", "fail", f"{type(exc).__name__}: {line}")
        raise
    report.mapping = mapped.mapping
    report.task = info.task
    worst = max(mapped.parity.values(), default=0.0)
    status = "pass" if worst <= PARITY_ATOL else "fail"
    report.add(
        "map", status, f"{mapped.mapping}: {mapped.note}", {**mapped.parity, "embed_dim": mapped.embed_dim}
    )
    if status == "fail":
        raise PortFailedError(f"map: {mapped.mapping} model differs from Hugging Face by {worst:.3g}")
    return mapped


def _phase_generate(report: PortReport, name: str, info: Any, mapped: Any, folder: Path, fp: str, ws: Workspace,
                    image_size: int | None) -> None:  # fmt: skip
    from foveal.networks.registry import load_workspace_networks
    from foveal.port.generate import entry_document, schema_defaults, write_entry

    defaults = schema_defaults(name, info, image_size, whole=mapped.mapping == "whole")
    written = write_entry(folder, entry_document(name, info, mapped, defaults, fp))
    load_workspace_networks(ws.root)
    report.files += [str(p) for p in written] + [str(p) for p in sorted(folder.glob("*.safetensors"))]
    if (folder / "hf").is_dir():
        report.files.append(str(folder / "hf"))
    report.add("generate", "pass", f"network {name} in {folder}", {"files": len(written)})


def port_hf(
    source: str,
    name: str,
    *,
    workspace: Workspace | str | Path | None = None,
    data: str | Path | None = None,
    force: bool = False,
    epochs: int = 1,
    image_size: int | None = None,
    prefer_native: bool = True,
) -> PortReport:
    """Port the HF model ``source`` (folder or hub id) as network ``name`` of the workspace.

    Args:
        data: a labeled class-folder dataset for the verify fine-tune (a few images per class
            are used); default: the synthetic shapes.
        force: regenerate an existing entry.
        epochs: verify fine-tuning epochs (over 4 images per class).
        image_size: the generated spec's input size (default: the model's).
        prefer_native: map ViT/DINOv2/ViT-MAE onto the native backbone (else wrap them too).

    Returns:
        The report (``status`` ``passed`` or ``unchanged``).

    Raises:
        PortSourceError: the source cannot be ported (exit 2); nothing is written.
        PortFailedError: a phase failed; ``port_report.json`` in the entry says which.
    """
    start = time.perf_counter()
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    check_name(name)
    model_folder = resolve_source(str(source), ws)
    from foveal.port.generate import fingerprint

    options = {"data": str(data) if data else None, "epochs": epochs, "image_size": image_size,
               "native": prefer_native}  # fmt: skip
    fp = fingerprint(model_folder, options)
    folder = entry_dir(ws, name)
    previous, clear = _existing(folder, fp, force)
    if previous is not None:
        return previous
    ws.ensure()
    data_root = _verify_data(ws, name, data)  # a bad --data is a usage error, before any work
    report = PortReport(name=name, source=str(model_folder), workspace=str(ws.root))
    info = _phase_inspect(report, model_folder)
    if clear and (folder / ENTRY_FILE).is_file():
        remove_entry(folder)  # also unregisters the old network and backbone
    elif clear:
        shutil.rmtree(folder)  # what a failed port left (its report)
    try:
        mapped = _phase_map(report, info, folder, prefer_native)
        _phase_generate(report, name, info, mapped, folder, fp, ws, image_size)
        _phase_verify(report, name, ws, folder, info, data_root, epochs, image_size)
    except Exception as exc:
        report.status = "failed"
        report.seconds = time.perf_counter() - start
        if not report.failed:
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            report.add("port", "fail", f"{type(exc).__name__}: {line}")
        path = report.write(folder)
        failed = report.failed[0]
        raise PortFailedError(
            f"port {name}: {failed['phase']} failed: {failed['message']}", str(path)
        ) from exc
    report.status = "passed"
    report.seconds = time.perf_counter() - start
    report.files.append(str(report.write(folder)))
    report.write(folder)
    return report


def _verify_data(ws: Workspace, name: str, data: str | Path | None) -> Path | None:
    """A few images per class of ``--data``, copied into the workspace cache (None: synthetic)."""
    from foveal.port.verify import subset_data

    if not data:
        return None
    if (Path(data).expanduser() / "images").is_dir():  # a detection / segmentation / depth dataset folder
        return Path(data).expanduser().resolve()
    return subset_data(Path(data).expanduser(), ws.cache_dir / f"port_data_{name}" / "labeled_train")


def _phase_verify(report: PortReport, name: str, ws: Workspace, folder: Path, info: Any,
                  data_root: Path | None, epochs: int, image_size: int | None) -> None:  # fmt: skip
    from foveal.networks.registry import load_workspace_networks
    from foveal.port.generate import MIN_INPUT, mark_verified
    from foveal.port.verify import synthetic_data, task_synthetic_data, verify_network, verify_task_network

    size = max(MIN_INPUT, image_size or info.image_size)
    whole = report.mapping == "whole"
    if whole and info.task in ("zero-shot-image-classification", "image-classification"):  # class folders
        root = data_root or synthetic_data(ws, size)
        result = verify_task_network(name, info.task, ws, root, report.add, epochs=epochs)
    elif whole:
        root = data_root or task_synthetic_data(ws, size)
        result = verify_task_network(name, info.task, ws, root, report.add, epochs=epochs)
    else:
        root = data_root or synthetic_data(ws, size)
        result = verify_network(name, ws, root, report.add, epochs=epochs)
    report.jobs = result["jobs"]
    report.files.append(result["onnx_file"])
    mark_verified(folder, True)
    load_workspace_networks(ws.root)  # the description drops "(port not verified)"


def remove_port(name: str, workspace: Workspace | str | Path | None = None) -> Path:
    """Remove the ported network ``name`` from the workspace (its jobs and results stay).

    Raises:
        PortSourceError: no such ported network.
    """
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    folder = entry_dir(ws, name)
    if not (folder / ENTRY_FILE).is_file():
        known = ", ".join(p["name"] for p in list_ports(ws)) or "none"
        raise PortSourceError(f"no ported network {name!r} in {ws.root} (ported: {known})")
    remove_entry(folder)
    return folder


def list_ports(workspace: Workspace | str | Path | None = None) -> list[dict[str, Any]]:
    """The ported networks of a workspace: name, source, mapping, verified."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace.resolve(workspace)
    root = ws.root / WORKSPACE_NETWORKS_DIR
    rows = []
    for entry_file in sorted(root.glob(f"*/{ENTRY_FILE}")) if root.is_dir() else []:
        doc = json.loads(entry_file.read_text(encoding="utf-8"))
        rows.append(
            {"name": doc.get("name"), "architecture": doc.get("source", {}).get("architecture"),
             "mapping": doc.get("mapping"), "verified": bool(doc.get("verified")), "folder": str(entry_file.parent)}
        )  # fmt: skip
    return rows
