"""Errors a user can fix, reported as one paragraph with exit status 2."""
from __future__ import annotations

import sys
from typing import Iterable

EXIT_USAGE = 2


class UserError(Exception):
    """Bad input (unknown name, misspelt key, value out of range, bad checkpoint).

    ``key`` names the config key at fault and ``choices`` the valid values, so
    the message always tells the user what would have worked.
    """

    def __init__(self, message: str, choices: Iterable[str] | None = None, key: str | None = None):
        self.problem = message
        self.choices = list(choices) if choices is not None else None
        self.key = key
        super().__init__(self.render())

    def render(self) -> str:
        """The one-paragraph message shown to the user."""
        text = self.problem
        if self.key and self.key not in text:
            text = f"{self.key}: {text}"
        if self.choices:
            shown = self.choices if len(self.choices) <= 40 else self.choices[:40] + ["..."]
            text += ". Valid choices: " + ", ".join(map(str, shown))
        return text if text.endswith(".") else text + "."


class TrainingDiverged(Exception):
    """A loss or a parameter became NaN or infinite."""


def report_and_exit(error: UserError, debug: bool = False) -> None:
    """Print ``error`` for a person and exit with status 2 (re-raise under debug)."""
    if debug:
        raise error
    print(f"error: {error.render()}", file=sys.stderr)
    print("(run with debug=true for the full stack trace)", file=sys.stderr)
    sys.exit(EXIT_USAGE)
