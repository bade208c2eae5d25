"""The one error type of `foveal.data`.

Every data problem a user can fix (a missing path, an unsafe archive, a folder without images)
is a `DatasetError`: one line naming the path or URI, what was expected or found, and a
suggestion where one exists. The CLI prints it as is, so it must never span lines.
"""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
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

    def __reduce__(self):
        # Raised inside DataLoader workers and process pools: rebuild from the parts, not the message.
        return (type(self), (self.where, self.problem, self.suggestion))
