"""The one error type users see: a file and what is wrong with it, on one line."""
from __future__ import annotations

import os


class KilnError(Exception):
    """A problem with the user's input or environment, reported as `FILE: problem`."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(str(self))

    def __str__(self) -> str:
        return self.problem if self.path is None else f"{self.path}: {self.problem}"
