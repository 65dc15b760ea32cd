"""Progress on stderr for every stage that takes more than a moment.

On a terminal a counted stage is a tqdm bar; anywhere else (CI logs, pipes, files) a bar's
carriage-return redraws would pile up into one huge line, so a stage prints one line when it
starts and one when it ends, with its count and time, and for a long stage one line a minute
between them (count, rate, time left), so a log shows it is alive. `enabled=False` (`--quiet`) prints
nothing. `stage` is for uncounted work (statistics, preparation): one line before, one after.
Imports nothing of mqbench: every layer may use it.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from tqdm import tqdm


def _tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class Lines:
    """tqdm's interface (update, set_postfix, close) as two log lines: start and end."""

    HEARTBEAT_S = 60.0

    def __init__(self, total: int, desc: str, initial: int = 0, unit: str = "it"):
        self.total, self.desc, self.n, self.unit = total, desc, initial, unit
        self.start, self.postfix = time.perf_counter(), ""
        self.first, self.last = initial, self.start
        print(f"{desc}: {total - initial} of {total} {unit} to do", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if self.start is not None and now - self.last >= self.HEARTBEAT_S:
            self.last = now
            rate = (self.n - self.first) / (now - self.start)
            left = f", about {(self.total - self.n) / rate:.0f} s left" if rate > 0 else ""
            print(f"{self.desc}: {self.n} of {self.total} {self.unit} ({rate:.2f}/s{left})",
                  file=sys.stderr, flush=True)

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        if self.start is None:
            return
        took = time.perf_counter() - self.start
        self.start = None
        extra = f" ({self.postfix})" if self.postfix else ""
        print(f"{self.desc}: {self.n} of {self.total} {self.unit} in {took:.1f} s{extra}",
              file=sys.stderr, flush=True)


class _Off:
    """What a disabled bar is: it counts nothing and prints nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass


def bar(total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "it",
        leave: bool = False):
    """A progress bar on a terminal, two log lines elsewhere, nothing when not `enabled`."""
    if not enabled:
        return _Off()
    if _tty():
        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave)
    return Lines(total, desc, initial, unit)


@contextmanager
def stage(what: str, enabled: bool = True):
    """`what ...` before the block, `what: done in X s` after it (nothing if not enabled)."""
    if not enabled:
        yield
        return
    print(f"{what} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    yield
    print(f"{what}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
