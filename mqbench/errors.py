"""The one exception users see, and the did-you-mean helper used by every lookup."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class MqbenchError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""
