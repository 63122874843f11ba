"""`python -m localserve.router NAME`: the background process of `localserve ab start NAME`."""

from __future__ import annotations

import sys

from ..errors import LocalserveError
from ..progress import step
from .server import serve


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        step("usage: python -m localserve.router NAME (started by `localserve ab start NAME`)")
        return 2
    try:
        serve(argv[0])
    except LocalserveError as e:
        step(f"error: {e}")
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
