"""Measuring a command the way the benchmarks report it: wall time, the peak RSS of its whole process
tree (sampled every 50 ms), and the peak size of the folders it writes."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss: int  # bytes, the whole process tree
    peak_disk: int  # bytes, the watched folders together


def folder_bytes(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass  # renamed or removed while we walked
    return total


def run_measured(cmd: list[str], watch: tuple[Path, ...] = (), env: dict | None = None) -> Measured:
    """Run `cmd` to its end; exits with its stderr's tail when it fails."""
    # stderr goes to a file: a pipe nobody reads while polling fills up and stalls the child for good.
    with tempfile.TemporaryFile("w+") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True, env=env)
        root = psutil.Process(proc.pid)
        peak_rss = peak_disk = 0
        last_disk = 0.0
        while proc.poll() is None:
            try:
                procs = [root] + root.children(recursive=True)
                peak_rss = max(peak_rss, sum(p.memory_info().rss for p in procs if p.is_running()))
            except psutil.Error:
                pass
            if watch and time.perf_counter() - last_disk > 0.5:  # walking a folder costs more than a sample
                peak_disk = max(peak_disk, sum(folder_bytes(w) for w in watch))
                last_disk = time.perf_counter()
            time.sleep(0.05)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            log.seek(0)
            sys.exit(f"measured command failed: {' '.join(map(str, cmd[:5]))}…\n{log.read()[-3000:]}")
    return Measured(seconds, peak_rss, peak_disk)
