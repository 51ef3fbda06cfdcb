"""Domain exceptions.

A :class:`UserError` is a mistake the user can fix (a typo in a matrix file, a missing
weights file). Its message is one line naming where the mistake is (file, key path,
plugin) and what would be valid. The CLI prints it without a traceback and exits 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input: printed as one line, exit code 2."""

    exit_code = 2

    def __init__(self, message: str | list[str]) -> None:
        # One line per problem: a list of problems (a matrix with several mistakes) keeps
        # one line each; newlines inside a single problem are folded.
        problems = message if isinstance(message, list) else [message]
        super().__init__("\n".join(" ".join(str(m).split("\n")) for m in problems))


class ConfigError(UserError):
    """An invalid matrix file, `--set` override or plugin option."""


class PluginError(UserError):
    """A plugin that cannot be loaded, registered or found."""


class MissingFileError(UserError):
    """A file the user must provide (weights, dataset) is missing."""


class CellError(Exception):
    """A failure inside one cell; recorded as ``status="error"``, the run goes on."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""``."""
    matches = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{matches[0]}'?)" if matches else ""


def valid_choices(choices: Iterable[str]) -> str:
    """Format the valid choices for an error message."""
    items = sorted(str(c) for c in choices)
    return "valid: " + (", ".join(f"'{c}'" for c in items) if items else "(none registered)")
