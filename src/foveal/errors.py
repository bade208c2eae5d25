"""Every error Foveal raises on purpose, and the exit code each one ends the CLI with.

This module sits at the bottom of the import graph (it imports nothing of Foveal), so every
layer raises these classes and the CLI decides exit codes from the class alone, never from
names or message text:

================================  ====  ==================================================
class                             exit  meaning
================================  ====  ==================================================
:class:`UsageError` and below        2  bad input the user can fix: a spec, a path, a job
                                        id, a dataset, a checkpoint, a key (one line each)
:class:`RunError` and below          1  a run that failed for a reason worth one clear line
                                        (a NaN loss, ONNX Runtime disagreeing with PyTorch)
any other exception                  1  an internal failure (``--debug`` shows the traceback)
``KeyboardInterrupt``              130  Ctrl-C
:class:`Terminated`                143  SIGTERM (``foveal jobs cancel``, a scheduler)
================================  ====  ==================================================

``str()`` of every class here is one line per problem; :meth:`FovealError.lines` gives them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports it


class FovealError(Exception):
    """Base of Foveal's errors: ``str()`` is one line per problem."""

    exit_code: int = EXIT_FAILURE

    def lines(self) -> list[str]:
        """The message, one problem per line (most errors have exactly one)."""
        text = str(self).strip()
        return text.splitlines() or [type(self).__name__]


# ------------------------------------------------------------------------------------- exit 2


class UsageError(FovealError, ValueError):
    """A problem with what the user asked for: one line, exit code 2."""

    exit_code = EXIT_USAGE


@dataclass(frozen=True)
class SpecIssue:
    """One problem in a spec: the dotted key (or file), what is wrong, and a suggestion."""

    key: str
    message: str
    suggestion: str = ""

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        return f"{text} ({self.suggestion})" if self.suggestion else text


class SpecError(UsageError):
    """Every issue found in a spec, reported together (``str()``: one line per issue)."""

    def __init__(self, issues: list[SpecIssue] | SpecIssue, source: str | None = None):
        self.issues = [issues] if isinstance(issues, SpecIssue) else list(issues)
        self.source = source
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        prefix = f"{self.source}: " if self.source else ""
        return [f"spec error: {prefix}{issue}" for issue in self.issues]

    def __reduce__(self) -> Any:
        return (type(self), (self.issues, self.source))


class DatasetError(UsageError):
    """A dataset path, URI or file that cannot be used.

    Args:
        where: the path or URI the problem is about.
        problem: what was expected or found there.
        suggestion: how to fix it, if known.
    """

    def __init__(self, where: str | Path, problem: str, suggestion: str | None = None):
        self.where = str(where)
        self.problem = problem
        self.suggestion = suggestion
        message = f"{self.where}: {problem}"
        if suggestion:
            message += f"; {suggestion}"
        # Messages embed file names from archives and listings; keep them on one line anyway.
        super().__init__(message.replace("\r", " ").replace("\n", " "))

    def __reduce__(self) -> Any:
        # Raised inside DataLoader workers and process pools: rebuild from the parts, not the message.
        return (type(self), (self.where, self.problem, self.suggestion))


class CheckpointError(UsageError):
    """A checkpoint is missing, corrupt, unsafe, not Foveal's, or of the wrong network/kind."""


class EncryptionKeyError(UsageError):
    """A model file is encrypted and no key, or the wrong key, was given (or the key is unusable)."""


class JobError(UsageError):
    """A job operation that cannot be done as asked."""


class JobNotFoundError(JobError, LookupError):
    """No job has this id (or the prefix matches nothing)."""


class AmbiguousJobIdError(JobError, LookupError):
    """A job id prefix matches more than one job."""


class JobStateError(JobError):
    """The job is in a status that does not allow the operation (e.g. finishing a Done job)."""


class HandoffError(JobError):
    """A parent job cannot give what the new job needs (wrong status, network, action or stage)."""


class AutoMLError(JobError):
    """A study that cannot go on (e.g. every trial failed); one line with the first error."""


class PortSourceError(UsageError):
    """A Hugging Face source cannot be ported: missing, not a vision model, an unsupported task."""


class OnnxFileError(UsageError):
    """An ONNX file given to an action cannot be read as an ONNX model."""


class GpuOutOfMemoryError(UsageError):
    """Training ran out of GPU memory: a setting to change (batch, image size, model), exit 2."""


class TensorRTUnavailableError(UsageError):
    """The ``tensorrt`` package (or a GPU for it) is not available on this machine."""


class EngineFileError(UsageError):
    """A TensorRT engine file given to an action is missing or cannot be loaded by this TensorRT."""


# ------------------------------------------------------------------------------------- exit 1


class RunError(FovealError, RuntimeError):
    """A run failed for a reason worth one clear line (exit code 1, no traceback)."""


class NonFiniteLossError(RunError):
    """Training stopped because the loss became NaN or infinite."""

    def __init__(self, message: str, *, epoch: int, step: int, last_checkpoint: Path | None) -> None:
        super().__init__(message)
        self.epoch = epoch
        self.step = step
        self.last_checkpoint = last_checkpoint


class ExportError(RunError):
    """No exporter produced a loadable ONNX file."""


class ExportVerificationError(ExportError):
    """ONNX Runtime differs from PyTorch by more than the tolerance; the file is kept."""

    def __init__(self, message: str, report: Any = None) -> None:
        super().__init__(message)
        self.report = report


class ExporterUnavailableError(RunError):
    """The installed torch does not provide this ONNX exporter."""


class EngineBuildError(RunError):
    """TensorRT could not parse the ONNX file or build the engine."""


class PortFailedError(RunError):
    """A phase of a port failed; the report (``port_report.json``) says which and why."""

    def __init__(self, message: str, report_file: str | None = None) -> None:
        super().__init__(message)
        self.report_file = report_file


class SubmitError(RunError):
    """A platform's client refused or failed to submit a job (its message is the first line)."""


# ------------------------------------------------------------------------------ interruptions


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, so that no ``except Exception`` in library code swallows
    it (Lightning turns a KeyboardInterrupt into ``sys.exit(1)``, so that cannot be used)."""


def exit_code(exc: BaseException) -> int:
    """The exit code the CLI ends with for ``exc`` (see the module docstring)."""
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, Terminated):
        return EXIT_TERMINATED
    if isinstance(exc, FovealError):
        return exc.exit_code
    return EXIT_FAILURE


def is_expected(exc: BaseException) -> bool:
    """Whether ``exc`` is one of ours: printed as its own lines, without a traceback."""
    return isinstance(exc, FovealError)


__all__ = [
    "EXIT_FAILURE",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_TERMINATED",
    "EXIT_USAGE",
    "AmbiguousJobIdError",
    "AutoMLError",
    "CheckpointError",
    "DatasetError",
    "EncryptionKeyError",
    "EngineBuildError",
    "ExportError",
    "ExportVerificationError",
    "ExporterUnavailableError",
    "FovealError",
    "GpuOutOfMemoryError",
    "HandoffError",
    "JobError",
    "JobNotFoundError",
    "JobStateError",
    "NonFiniteLossError",
    "OnnxFileError",
    "PortFailedError",
    "PortSourceError",
    "RunError",
    "SpecError",
    "SpecIssue",
    "SubmitError",
    "Terminated",
    "TensorRTUnavailableError",
    "EngineFileError",
    "UsageError",
    "exit_code",
    "is_expected",
]
