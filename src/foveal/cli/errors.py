"""Turning exceptions into lines on stderr and an exit code (the table is in :mod:`foveal.errors`)."""

from __future__ import annotations

import signal
import traceback
from types import FrameType

import typer

from foveal.errors import EXIT_USAGE, FovealError, Terminated, UsageError, exit_code

DEBUG = False

__all__ = ["DEBUG", "UsageError", "install_sigterm_handler", "run_cli"]


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


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise Terminated("terminated by SIGTERM")


def install_sigterm_handler() -> None:
    """SIGTERM becomes :class:`Terminated` in the main thread: the running job records it and the
    command exits 143, as a shell reports a process killed by SIGTERM."""
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (e.g. called from a test's worker thread)
        pass


def run_cli(app: typer.Typer, argv: list[str]) -> int:
    """Run the typer app and map every exception to its lines and exit code."""
    try:
        result = app(args=argv, prog_name="foveal", standalone_mode=False)
        # Without standalone mode click *returns* the code of a ``typer.Exit(n)`` instead of raising.
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    except KeyboardInterrupt as exc:
        typer.echo("canceled", err=True)
        return exit_code(exc)
    except Terminated as exc:
        typer.echo("terminated", err=True)
        return exit_code(exc)
    except Exception as exc:  # noqa: BLE001 - the one place every error becomes a line
        kind = _click_kind(exc)
        if kind == "Exit":
            return exc.exit_code  # type: ignore[attr-defined]
        if kind == "Abort":
            typer.echo("canceled", err=True)
            return exit_code(KeyboardInterrupt())
        if kind == "UsageError":
            ctx = getattr(exc, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            _say([f"{exc.format_message()}{hint}"])  # type: ignore[attr-defined]
            return EXIT_USAGE
        if kind == "ClickException":
            _say([exc.format_message()])  # type: ignore[attr-defined]
            return exc.exit_code  # type: ignore[attr-defined]
        if DEBUG:
            traceback.print_exc()
        if isinstance(exc, FovealError):
            _say(exc.lines())
        else:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            _say([f"{type(exc).__name__}: {first} (run with --debug for the traceback)"])
        return exit_code(exc)
