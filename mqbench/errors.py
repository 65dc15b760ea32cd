"""The one exception users see, the did-you-mean helper used by every lookup, and the check
that an optional dependency is installed."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterable
from types import ModuleType


class MqbenchError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits non-zero."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import an optional dependency, or fail with one line naming the extra that installs it.

    Heavy stacks (transformers, tokenizers, openai, trl) are extras, so a vision-only install
    stays small; the command that needs one says which.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MqbenchError(f"{what} needs the `{module.split('.')[0]}` package: "
                           f"pip install 'mqbench[{extra}]' (or -e '.[{extra}]' in a clone)"
                           ) from None
