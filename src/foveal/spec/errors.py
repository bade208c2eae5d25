"""Spec errors: every problem in a spec is collected and reported together, one line each."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecIssue:
    """One problem: the dotted key (or file), what is wrong, and a suggestion where one exists."""

    key: str
    message: str
    suggestion: str = ""

    def __str__(self) -> str:
        text = f"{self.key}: {self.message}" if self.key else self.message
        return f"{text} ({self.suggestion})" if self.suggestion else text


class SpecError(ValueError):
    """Raised with every issue found in a spec; ``str()`` gives one line per issue."""

    def __init__(self, issues: list[SpecIssue] | SpecIssue, source: str | None = None):
        self.issues = [issues] if isinstance(issues, SpecIssue) else list(issues)
        self.source = source
        super().__init__("\n".join(self.lines()))

    def lines(self) -> list[str]:
        prefix = f"{self.source}: " if self.source else ""
        return [f"spec error: {prefix}{issue}" for issue in self.issues]
