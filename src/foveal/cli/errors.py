"""Turning exceptions into one line and an exit code (2 for bad input, 1 for failures)."""

from __future__ import annotations

import importlib
import sys
import traceback

import typer

DEBUG = False

# (module, class) pairs whose exceptions are the user's input problems: one line, exit 2.
_USER_ERRORS = (
    ("foveal.spec.errors", "SpecError"),
    ("foveal.jobs.runner", "UsageError"),
    ("foveal.data.errors", "DatasetError"),
    ("foveal.engine.checkpoint", "CheckpointError"),
    ("foveal.jobs.errors", "JobError"),  # not found, ambiguous id, wrong state, handoff
    ("foveal.export.tensorrt", "TensorRTUnavailableError"),
    ("foveal.export.tensorrt", "OnnxFileError"),
    ("builtins", "FileNotFoundError"),  # raised for a path the user named
)
# Failures of a run that deserve one clear line but are not usage errors: exit 1.
_RUN_ERRORS = (
    ("foveal.engine.callbacks", "NonFiniteLossError"),
    ("foveal.export.onnx", "ExportVerificationError"),
)


class UsageError(ValueError):
    """A problem with the command line itself."""


def _classes(pairs: tuple[tuple[str, str], ...]) -> tuple[type, ...]:
    found = []
    for module, name in pairs:
        mod = sys.modules.get(module)
        if mod is None:
            continue  # never imported, so never raised
        cls = getattr(mod, name, None)
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def _say(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line if line.startswith(("error:", "spec error:")) else f"error: {line}", err=True)


def _click_kind(exc: BaseException) -> str:
    """Which click exception family ``exc`` is (typer may vendor its own copy of click)."""
    names = {cls.__name__ for cls in type(exc).__mro__ if cls.__module__.split(".")[0] in ("click", "typer")}
    for kind in ("Exit", "UsageError", "ClickException", "Abort"):
        if kind in names:
            return kind
    return ""


def run_cli(app: typer.Typer, argv: list[str]) -> int:
    """Run the typer app and map every exception to a message and an exit code."""
    try:
        result = app(args=argv, prog_name="foveal", standalone_mode=False)
        # Without standalone mode click *returns* the code of a ``typer.Exit(n)`` instead of raising.
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    except KeyboardInterrupt:
        typer.echo("canceled", err=True)
        return 130
    except Exception as exc:  # noqa: BLE001 - the one place every error becomes a line
        kind = _click_kind(exc)
        if kind == "Exit":
            return exc.exit_code  # type: ignore[attr-defined]
        if kind == "Abort":
            typer.echo("canceled", err=True)
            return 130
        if kind == "UsageError":
            ctx = getattr(exc, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            _say([f"{exc.format_message()}{hint}"])  # type: ignore[attr-defined]
            return 2
        if kind == "ClickException":
            _say([exc.format_message()])  # type: ignore[attr-defined]
            return exc.exit_code  # type: ignore[attr-defined]
        if DEBUG:
            traceback.print_exc()
        user = isinstance(exc, (UsageError, *_classes(_USER_ERRORS)))
        lines = (
            exc.lines()
            if hasattr(exc, "lines")
            else [str(exc).splitlines()[0] if str(exc) else type(exc).__name__]
        )
        if user or isinstance(exc, _classes(_RUN_ERRORS)):
            _say(lines)
            return 2 if user else 1
        _say([f"{type(exc).__name__}: {lines[0]} (run with --debug for the traceback)"])
        return 1


def ensure_loaded() -> None:
    """Import the error modules so their classes are known (used by tests)."""
    for module, _ in _USER_ERRORS + _RUN_ERRORS:
        try:
            importlib.import_module(module)
        except ImportError:
            pass
