"""What the router tests share: names, a free port, a router stopped when the test ends."""

from __future__ import annotations

import contextlib
import socket
from typing import Iterator

NAME = "tiny-ab"
V1, V2 = f"{NAME}:v1", f"{NAME}:v2"
SHORT = {"num_predict": 6}  # a few tokens: these tests are about routing, not answers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_router(name: str, arms: list[str], upstream: str, port: int | None = None) -> Iterator:
    """A router started in the background, stopped (and its process gone) at the end."""
    from localserve.router import experiment

    started = experiment.start(name, arms, port=port or free_port(), upstream=upstream)
    try:
        yield started
    finally:
        current = experiment.load(name)
        if experiment.is_running(current):
            experiment.stop(name)
