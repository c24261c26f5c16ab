"""What the reporter refuses, and how: one line naming the file and what exists instead."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class SummaryError(ValueError):
    """A folder or file that cannot be summarized; the message says what exists instead."""


class FileProblem(SummaryError):
    """One file of a run that cannot be used as it is; ``str()`` is "<path> is <what is wrong>"."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path} is {problem}")
        self.path = path


def listing(names: Sequence[str]) -> str:
    """Names for a message, "none" for none."""
    return ", ".join(names) if names else "none"
