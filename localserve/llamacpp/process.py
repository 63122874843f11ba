"""Run a llama.cpp tool as a child process, turning its progress lines into one progress bar."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from ..progress import bar


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
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=env)
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
