"""Run a llama.cpp tool as a child process, turning its progress lines into one progress bar."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass

from ..errors import Terminated, ToolError
from ..progress import bar


# Run in front of a child: has the kernel SIGKILL it when its parent dies (PR_SET_PDEATHSIG, kept across
# exec), then becomes the child. Not a preexec_fn: that makes subprocess run the at-fork handlers, and
# a Ctrl-C arriving inside one of those is lost.
_GUARD = """import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL)
if os.getppid() != int(sys.argv[1]):
    os._exit(1)
os.execvp(sys.argv[2], sys.argv[2:])
"""


def dies_with_us(cmd: list[str]) -> list[str]:
    """`cmd`, run so that the kernel kills it when this process dies: after a `kill -9` of localserve no
    converter or quantizer keeps writing into the output folder the next run takes over. As is where
    Linux's PR_SET_PDEATHSIG does not exist."""
    if not sys.platform.startswith("linux"):
        return list(cmd)
    return [sys.executable, "-S", "-c", _GUARD, str(os.getpid()), *map(str, cmd)]


def killed(tool: str, what: str, returncode: int) -> ToolError | None:
    """The one-line ToolError for a child that a signal ended (returncode -N), or None if none did.
    A child that Ctrl-C or SIGTERM ended (a terminal sends Ctrl-C to the whole process group) stops
    this run too, as if the signal had reached us first: KeyboardInterrupt or Terminated is raised."""
    if returncode >= 0:
        return None
    if -returncode == signal.SIGINT:
        raise KeyboardInterrupt
    if -returncode == signal.SIGTERM:
        raise Terminated
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    why = " (often the kernel's out-of-memory killer, or `kill -9`)" if -returncode == signal.SIGKILL else ""
    return ToolError(tool, f"{what} was killed by {name}{why}; nothing it wrote was kept",
                     hint="run the same command again: the stages that finished are kept")


@dataclass(frozen=True)
class Finished:
    returncode: int
    tail: str  # the last lines of combined stdout/stderr, for error messages


def run_with_progress(cmd: list[str], desc: str, progress: re.Pattern, unit: str, env: dict | None = None,
                      scale=int, keep: int = 60) -> Finished:
    """Run `cmd`; every output line matching `progress` (groups: done, total) moves the bar.

    Lines are split on '\\r' too, since tqdm-style tools redraw one line. The child is killed if we
    are interrupted, so no tool keeps writing after we have given up on its output.
    """
    lines: list[str] = []
    proc = subprocess.Popen(dies_with_us(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", env=env)
    assert proc.stdout is not None
    try:
        with bar(None, desc, unit=unit) as b:
            for chunk in proc.stdout:
                for line in chunk.split("\r"):
                    lines.append(line.rstrip("\n"))
                    m = progress.search(line)
                    if m:
                        b.n, b.total = scale(m.group(1)), scale(m.group(2))
                        b.refresh()
                del lines[:-keep]
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return Finished(rc, "\n".join(line for line in lines if line.strip()))
