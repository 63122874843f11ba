"""Fault injection for the tests of interrupted runs.

With `LOCALSERVE_KILL_AT=POINT` in its environment, a localserve process kills itself with SIGKILL —
as `kill -9` or the kernel's out-of-memory killer would — when it reaches the point of that name: no
handler runs, no temporary file is removed. The points sit inside writes too quick to interrupt
from outside (a bundle of small files, a store install, the moment between creating a model and
recording it). Unset, as it always is outside tests, `kill_point` does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "LOCALSERVE_KILL_AT"

# The points, where they are reached.
BUNDLE = "bundle"  # the bundle's first file is in its temporary tar
STORE_INSTALL = "store install"  # the model's blobs are in the Ollama store, its manifest is not
REGISTRATION_RECORD = "registration record"  # NAME:vN exists at its place, the version store does not know yet


def kill_point(name: str) -> None:
    if os.environ.get(ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)
