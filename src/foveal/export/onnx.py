"""Export a PyTorch model to ONNX and check ONNX Runtime against PyTorch on the same input.

Follows timm's ``utils/onnx.py``: export in eval mode on CPU in float32, then run the file in
ONNX Runtime and report the max absolute difference per output (house style rule 10). With a
dynamic batch the check also runs at a second batch size, because a tracer that bakes the
example's batch into a Reshape only shows up there.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from foveal.errors import ExportError, ExportVerificationError, UsageError
from foveal.export.exporters import EXPORTERS, exporter_order
from foveal.secrets import active_key, encrypt_bytes

logger = logging.getLogger(__name__)

Inputs = torch.Tensor | Sequence[torch.Tensor]


@dataclass
class ExportReport:
    """What `export_onnx` wrote and how well ONNX Runtime matched PyTorch.

    Shapes come from the ONNX graph; a dynamic dimension appears by name (``"batch"``).
    ``passed`` is None when verification was switched off.
    """

    onnx_file: Path
    opset: int
    exporter: str
    input_names: list[str]
    output_names: list[str]
    input_shapes: dict[str, list[int | str]]
    output_shapes: dict[str, list[int | str]]
    max_abs_diff: dict[str, float]
    passed: bool | None
    atol: float
    verified_batch_sizes: list[int]
    file_size_bytes: int
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)
    fallback_reasons: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        diff = max(self.max_abs_diff.values(), default=float("nan"))
        verdict = {True: "passed", False: "FAILED", None: "not verified"}[self.passed]
        return (
            f"{self.onnx_file} ({self.file_size_bytes / 1e6:.1f} MB, opset {self.opset}, {self.exporter} "
            f"exporter, {self.seconds:.1f} s): max |ORT - torch| = {diff:.3g} at batch "
            f"{self.verified_batch_sizes} (atol {self.atol:g}) {verdict}"
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["onnx_file"] = str(self.onnx_file)
        return out


def export_batch_settings(batch_size: int) -> tuple[int, bool]:
    """Map TAO's ``export.batch_size`` (-1 = dynamic) to ``(example_batch, dynamic_batch)``.

    A dynamic export traces with a batch of 2, not 1: ``torch.export`` specializes size-1
    dimensions and tracers can fold a batch of 1 into broadcasts.
    """
    if batch_size == -1:
        return 2, True
    if batch_size >= 1:
        return batch_size, False
    raise ValueError(f"export batch_size must be -1 (dynamic) or >= 1, got {batch_size}")


def flatten_outputs(outputs: object) -> tuple[list[str] | None, tuple[torch.Tensor, ...]]:
    """``(keys, tensors)`` of a tensor, a tuple/list of tensors, or a dict (in its key order)."""
    keys = None
    if isinstance(outputs, torch.Tensor):
        tensors: tuple = (outputs,)
    elif isinstance(outputs, Mapping):
        keys, tensors = [str(k) for k in outputs], tuple(outputs.values())
    elif isinstance(outputs, (tuple, list)):
        tensors = tuple(outputs)
    else:
        raise TypeError(
            f"model output must be a tensor, tuple or dict of tensors, got {type(outputs).__name__}"
        )
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"model outputs must all be tensors, got {type(tensor).__name__}")
    return keys, tensors


class _FlatOutputs(nn.Module):
    """Wraps a model so that both exporters see a plain tuple of output tensors."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        # A new module starts in training mode; the legacy exporter "restores" that mode on
        # the whole tree after tracing, which would switch dropout/drop-path back on for the
        # parity check that follows.
        self.train(model.training)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return flatten_outputs(self.model(*inputs))[1]


@contextlib.contextmanager
def _cpu_fp32_eval(model: nn.Module) -> Iterator[nn.Module]:
    """Yield `model` in eval mode on CPU in float32; copies it only if it must be moved or cast."""
    tensors = [*model.parameters(), *model.buffers()]
    if any(t.device.type != "cpu" or (t.is_floating_point() and t.dtype != torch.float32) for t in tensors):
        logger.info("exporting a float32 CPU copy of the model")
        model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32)
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes.items():
            module.training = training


def _as_input_tuple(inputs: Inputs) -> tuple[torch.Tensor, ...]:
    items = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
    if not items or not all(isinstance(x, torch.Tensor) for x in items):
        raise TypeError("example inputs must be a tensor or a non-empty tuple of tensors")
    return tuple(x.detach().to("cpu", torch.float32) if x.is_floating_point() else x.cpu() for x in items)


def _batch_size(inputs: tuple[torch.Tensor, ...]) -> int:
    sizes = {x.shape[0] if x.ndim else None for x in inputs}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"a dynamic batch needs every input to share dim 0, got shapes {[tuple(x.shape) for x in inputs]}"
        )
    return int(sizes.pop())  # type: ignore[arg-type]  # None was ruled out above


def _alternate_batch(inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """The inputs at batch B + 1: rows repeat cyclically, float copies halved so rows differ."""
    batch = _batch_size(inputs)
    index = torch.arange(batch + 1) % batch
    out = []
    for x in inputs:
        grown = x[index].clone()
        if grown.is_floating_point():
            grown[batch:] *= 0.5
        out.append(grown)
    return tuple(out)


def _resolve_names(
    names: Sequence[str] | None, count: int, stem: str, keys: list[str] | None = None
) -> list[str]:
    if names is None:
        names = (
            keys if keys is not None else ([stem] if count == 1 else [f"{stem}_{i}" for i in range(count)])
        )
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"got {len(names)} {stem} names {names} for {count} {stem}s")
    if len(set(names)) != len(names):
        raise ValueError(f"{stem} names must be unique, got {names}")
    return names


def _max_abs_diff(expected: np.ndarray, actual: np.ndarray) -> float:
    """Max |a - b|; equal infinities and NaN-against-NaN count as 0, any other non-finite as inf."""
    a, b = expected.astype(np.float64), actual.astype(np.float64)
    if a.size == 0:
        return 0.0
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        diff = np.where(same, 0.0, np.abs(a - b))
    diff = np.where(np.isfinite(diff), diff, np.inf)
    return float(diff.max())


def _session_diffs(
    session: ort.InferenceSession, model: nn.Module, inputs: tuple[torch.Tensor, ...]
) -> dict[str, float]:
    """Run `session` and `model` on `inputs`; raise on count or shape mismatch, else diff per output."""
    ort_inputs, ort_outputs = session.get_inputs(), session.get_outputs()
    if len(ort_inputs) != len(inputs):
        raise ValueError(f"the ONNX file takes {len(ort_inputs)} inputs, got {len(inputs)}")
    got = session.run(None, {meta.name: x.numpy() for meta, x in zip(ort_inputs, inputs, strict=True)})
    with torch.no_grad():
        _, expected = flatten_outputs(model(*inputs))
    if len(expected) != len(got):
        raise ValueError(f"the ONNX file has {len(got)} outputs, PyTorch {len(expected)}")
    diffs = {}
    for meta, ref_tensor, out in zip(ort_outputs, expected, got, strict=True):
        ref = ref_tensor.detach().cpu().numpy()
        if ref.shape != out.shape:
            raise ValueError(f"output '{meta.name}': ONNX Runtime shape {out.shape} != PyTorch {ref.shape}")
        diffs[meta.name] = _max_abs_diff(ref, out)
    return diffs


def _cpu_session(onnx_file: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])


def verify_onnx(onnx_file: str | os.PathLike, model: nn.Module, inputs: Inputs) -> dict[str, float]:
    """Max absolute difference per output between ONNX Runtime (CPU) and `model` on `inputs`.

    Args:
        onnx_file: the exported file.
        model: the PyTorch model; run in eval mode, on CPU, in float32 (its mode is restored).
        inputs: a tensor or a tuple of tensors, in the ONNX file's input order.

    Returns:
        ``{output_name: max_abs_diff}`` in the file's output order.
    """
    with _cpu_fp32_eval(model) as cpu_model:
        return _session_diffs(_cpu_session(Path(onnx_file)), cpu_model, _as_input_tuple(inputs))


def _annotate(
    onnx_file: Path, metadata: Mapping[str, str], output_shapes: list[torch.Size], dynamic_batch: bool
):
    """Store `metadata`; pin output dims an exporter left symbolic to the PyTorch output's sizes.

    The torchscript exporter names some static output dims (e.g. ``Gatherembedding_dim_1``) when
    its shape inference gives up; only the batch should be symbolic.
    """
    proto = onnx.load(str(onnx_file), load_external_data=False)
    for value, shape in zip(proto.graph.output, output_shapes, strict=True):
        dims = value.type.tensor_type.shape.dim
        for i, (dim, size) in enumerate(zip(dims, shape, strict=False)):
            if not (dynamic_batch and i == 0) and not dim.HasField("dim_value"):
                dim.dim_value = size
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(onnx_file))


def _normalize_metadata(metadata: Mapping[str, object] | None) -> dict[str, str]:
    """String values pass through; others (class-name lists, sizes) are stored as JSON."""
    out = {}
    for key, value in (metadata or {}).items():
        if not isinstance(key, str):
            raise TypeError(f"metadata keys must be strings, got {key!r}")
        out[key] = value if isinstance(value, str) else json.dumps(value)
    return out


def _graph_io(onnx_file: Path) -> tuple[int, dict[str, list], dict[str, list]]:
    """``(opset, input shapes, output shapes)`` as declared in the file."""
    proto = onnx.load(str(onnx_file), load_external_data=False)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))

    def shapes(values) -> dict[str, list]:
        return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}

    return opset, shapes(proto.graph.input), shapes(proto.graph.output)


def _publish(tmp_file: Path, onnx_file: Path) -> None:
    """Move external-data siblings, then atomically rename the file into place; under an active
    encryption key the file is encrypted first (:mod:`foveal.secrets`)."""
    siblings = [s for s in tmp_file.parent.iterdir() if s != tmp_file]
    key = active_key()
    if key is not None:
        if siblings:
            raise UsageError(
                f"{onnx_file}: the model needs ONNX external data (over 2 GB), which encrypted export "
                "does not support; export without encryption_key"
            )
        tmp_file.write_bytes(encrypt_bytes(tmp_file.read_bytes(), key))
    for sibling in siblings:
        os.replace(sibling, onnx_file.parent / sibling.name)
    os.replace(tmp_file, onnx_file)


def _first_working_export(order, flat, args, tmp_file, checks, verify, annotate, **export_kwargs):
    """Try each exporter in `order`; return ``(name, diffs, fallback reasons)`` of the first that works.

    "Works" = exports, passes the ONNX checker, and runs in ONNX Runtime with the expected output
    shapes at every batch in `checks`. A too-large difference does not trigger a fallback.
    """
    reasons: dict[str, str] = {}
    for position, name in enumerate(order):
        for stale in tmp_file.parent.iterdir():  # leftovers of the exporter that failed
            if stale.is_dir():
                shutil.rmtree(stale)
            else:
                stale.unlink()
        try:
            EXPORTERS[name](flat, args, tmp_file, **export_kwargs)
            annotate(tmp_file)
            onnx.checker.check_model(str(tmp_file))
            diffs: dict[str, float] = {}
            if verify:
                session = _cpu_session(tmp_file)
                for inputs in checks:
                    for out, diff in _session_diffs(session, flat, inputs).items():
                        diffs[out] = max(diff, diffs.get(out, 0.0))
            return name, diffs, reasons
        except Exception as error:  # any failure means "try the next exporter"
            reasons[name] = (
                f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            )
            following = order[position + 1] if position + 1 < len(order) else None
            logger.warning(
                "%s exporter failed (%s)%s", name, reasons[name], f"; trying {following}" if following else ""
            )
    raise ExportError("; ".join(f"{name} exporter: {reason}" for name, reason in reasons.items()))


def export_onnx(
    model: nn.Module,
    example_inputs: Inputs,
    onnx_file: str | os.PathLike,
    *,
    opset_version: int = 17,
    dynamic_batch: bool = True,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    metadata: Mapping[str, object] | None = None,
    verify: bool = True,
    atol: float = 1e-4,
    exporter: str = "auto",
    verbose: bool = False,
    fixed_batch_fallback: bool = False,
) -> ExportReport:
    """Export `model` to `onnx_file` and check ONNX Runtime against PyTorch.

    Args:
        model: run in eval mode on CPU in float32 (a copy is made only if it is elsewhere).
        example_inputs: a tensor or tuple of tensors; dim 0 is the batch.
        onnx_file: written atomically; a failed export leaves any previous file untouched.
        opset_version: ONNX opset of the default domain.
        dynamic_batch: name dim 0 of every input and output ``"batch"``, and verify at a
            second batch size too. See `export_batch_settings` for TAO's ``batch_size``.
        input_names: default ``input`` (one input) or ``input_0, input_1, ...``.
        output_names: default ``output`` (a tensor), ``output_0, ...`` (a tuple) or the
            keys of a dict output (flattened in its key order).
        metadata: stored in the file's ``metadata_props``; non-string values as JSON.
        verify: compare ONNX Runtime (CPU) with PyTorch; off only for debugging.
        atol: largest allowed max absolute difference per output.
        exporter: ``"auto"`` (torchscript, then dynamo on failure), ``"torchscript"`` or ``"dynamo"``.
        verbose: log the exported graph (its inputs, outputs and operators by count) at INFO
            (TAO's ``export.verbose``).
        fixed_batch_fallback: when no exporter gives a graph that runs at a second batch size,
            export with the example's batch fixed instead of failing (a warning and
            ``fallback_reasons["dynamic_batch"]`` say so). For ported models whose graphs trace
            shapes from the batch; off by default, so a batch baked into a native network's
            graph stays an error.

    Returns:
        The `ExportReport`.

    Raises:
        ExportVerificationError: a difference exceeds `atol`; the file is kept and the report
            is ``error.report``.
        ExportError: no exporter produced a file that loads and runs in ONNX Runtime.
    """
    start = time.perf_counter()
    onnx_file = Path(onnx_file)
    order = exporter_order(exporter)
    if atol < 0:
        raise ValueError(f"atol must be >= 0, got {atol}")
    args = _as_input_tuple(example_inputs)
    checks = [args, _alternate_batch(args)] if dynamic_batch else [args]
    stored_metadata = _normalize_metadata(metadata)
    with _cpu_fp32_eval(model) as cpu_model:
        with torch.no_grad():
            keys, outputs = flatten_outputs(cpu_model(*args))
        in_names = _resolve_names(input_names, len(args), "input")
        out_names = _resolve_names(output_names, len(outputs), "output", keys)
        onnx_file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f".{onnx_file.name}.", dir=onnx_file.parent) as tmp:
            tmp_file = Path(tmp) / onnx_file.name

            def attempt(dynamic: bool, batches: list) -> tuple[str, dict[str, float], dict[str, str]]:
                return _first_working_export(
                    order,
                    _FlatOutputs(cpu_model),
                    args,
                    tmp_file,
                    batches,
                    verify,
                    lambda path: _annotate(path, stored_metadata, [o.shape for o in outputs], dynamic),
                    opset_version=opset_version,
                    input_names=in_names,
                    output_names=out_names,
                    dynamic_batch=dynamic,
                )

            try:
                used, diffs, reasons = attempt(dynamic_batch, checks)
            except ExportError as error:
                if not (dynamic_batch and fixed_batch_fallback):
                    raise
                # Some graphs trace shapes from the example's batch (a Split sized by it, say): a
                # file that runs at its own batch only is still a correct export of that batch.
                batch = int(args[0].shape[0]) if args[0].ndim else 1
                logger.warning(
                    "no exporter gave a graph that runs at another batch size (%s); exporting with a fixed "
                    "batch of %d instead",
                    str(error)[:300],
                    batch,
                )
                dynamic_batch, checks = False, [args]
                used, diffs, reasons = attempt(False, checks)
                reasons["dynamic_batch"] = f"fixed batch {batch}: {str(error)[:300]}"
            opset, input_shapes, output_shapes = _graph_io(tmp_file)
            _publish(tmp_file, onnx_file)
    report = ExportReport(
        onnx_file=onnx_file,
        opset=opset,
        exporter=used,
        input_names=in_names,
        output_names=out_names,
        input_shapes=input_shapes,
        output_shapes=output_shapes,
        max_abs_diff=diffs,
        passed=all(d <= atol for d in diffs.values()) if verify else None,
        atol=atol,
        verified_batch_sizes=[int(c[0].shape[0]) if c[0].ndim else 1 for c in checks] if verify else [],
        file_size_bytes=onnx_file.stat().st_size,
        seconds=time.perf_counter() - start,
        metadata=stored_metadata,
        fallback_reasons=reasons,
    )
    if report.passed is False:
        name, diff = max(report.max_abs_diff.items(), key=lambda item: item[1])
        raise ExportVerificationError(
            f"ONNX Runtime differs from PyTorch by {diff:.3g} on output '{name}' "
            f"(atol {report.atol:g}); the file was kept at {report.onnx_file}",
            report,
        )
    logger.info(report.summary())
    if verbose:
        logger.info(describe_graph(onnx_file))
    return report


def describe_graph(onnx_file: str | os.PathLike) -> str:
    """One line per input and output and one for the operators by count (``export.verbose``)."""
    import onnx

    model = onnx.load(str(onnx_file), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1

    def shape(value: Any) -> str:
        dims = value.type.tensor_type.shape.dim
        return "x".join(d.dim_param or str(d.dim_value) for d in dims)

    lines = [f"ONNX graph {onnx_file}: {len(model.graph.node)} nodes, opset {model.opset_import[0].version}"]
    lines += [f"  input {v.name}: {shape(v)}" for v in model.graph.input]
    lines += [f"  output {v.name}: {shape(v)}" for v in model.graph.output]
    ops = ", ".join(f"{op} x{n}" for op, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return "\n".join([*lines, f"  operators: {ops}"])


def check_input_channels(input_channel: int, model_channels: int = 3) -> None:
    """TAO's ``export.input_channel`` must be what the trained model reads.

    Raises:
        SpecError: they differ.
    """
    if input_channel != model_channels:
        from foveal.errors import SpecError, SpecIssue

        raise SpecError(
            SpecIssue(
                "export.input_channel",
                f"{input_channel}, but the checkpoint's model reads {model_channels}-channel images",
                f"use {model_channels}",
            )
        )


def note_export_device(on_cpu: bool, gpu_id: int) -> None:
    """TAO's ``export.on_cpu`` / ``export.gpu_id``: Foveal traces on the CPU in float32 whatever they
    say (the ONNX graph does not depend on the device); one line says so when they ask otherwise."""
    if not on_cpu or gpu_id != 0:
        logger.warning(
            "export.on_cpu=%s, export.gpu_id=%d: Foveal exports on the CPU in float32 (the ONNX graph is the "
            "same on any device); these keys are not used",
            str(on_cpu).lower(),
            gpu_id,
        )
