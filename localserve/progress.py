"""One progress wrapper, silenced everywhere by one switch (`set_quiet`, i.e. `--quiet`)."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

from tqdm.auto import tqdm

log = logging.getLogger("localserve")

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def is_quiet() -> bool:
    return _quiet


@contextlib.contextmanager
def bar(total: int | None, desc: str, unit: str = "B") -> Iterator[tqdm]:
    """A progress bar on stderr; bytes are shown with SI prefixes."""
    scale = unit == "B"
    # disable=None: tqdm draws only on a terminal, so logs and CI output stay readable.
    with tqdm(total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1000, mininterval=0.5,
              disable=True if _quiet else None, file=sys.stderr, leave=False, dynamic_ncols=True) as b:
        yield b


def step(message: str) -> None:
    """One line announcing a stage or a decision (a heuristic that was applied)."""
    if not _quiet:
        print(f"localserve: {message}", file=sys.stderr, flush=True)
