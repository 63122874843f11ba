"""The real Ollama, for the `ollama` test tier: found, started on a free loopback port with a store and a
HOME of its own, stopped with its children.

Which binary: $LOCALSERVE_OLLAMA_BIN, else `ollama` on PATH, else the one built for this machine beside
the repository (../shared/ollama/bin/ollama, see its README). Library code never looks there: a user's
Ollama is theirs to start.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
BESIDE_REPO = REPO.parent / "shared" / "ollama" / "bin" / "ollama"
BIN_ENV = "LOCALSERVE_OLLAMA_BIN"


def ollama_binary() -> Path | None:
    """The `ollama` the tier runs, or None when there is none (the tier is skipped then)."""
    chosen = os.environ.get(BIN_ENV)
    if chosen:
        return Path(chosen)
    on_path = shutil.which("ollama")
    if on_path:
        return Path(on_path)
    return BESIDE_REPO if os.access(BESIDE_REPO, os.X_OK) else None


def _link_stubs(lib: Path) -> dict[str, str]:
    """Files of `lib` that stand for symbolic links: a few bytes naming a sibling (libllama.so.0 holding
    "libllama.so.0.1.0"), as a copy that does not keep links leaves them. name -> target."""
    stubs = {}
    for f in lib.iterdir() if lib.is_dir() else ():
        if f.is_file() and not f.is_symlink() and f.stat().st_size < 256:
            target = f.read_bytes().strip().decode("utf-8", "replace")
            if target and "/" not in target and target != f.name and (lib / target).exists():
                stubs[f.name] = target
    return stubs


def runnable(binary: Path) -> Path:
    """`binary`, or when the libraries beside it (../lib/ollama) hold link stubs instead of symbolic links
    (../shared/ollama's do: the loader refuses them, "file too short"), a copy with the links restored,
    made once under $LOCALSERVE_HOME. Ollama finds llama-server at ../lib/ollama from its own path, so the
    copy keeps that layout."""
    from localserve.paths import home

    lib = binary.resolve().parent.parent / "lib" / "ollama"
    stubs = _link_stubs(lib)
    if not stubs:
        return binary
    files = sorted([binary.resolve(), *lib.iterdir()])
    key = hashlib.sha256(json.dumps([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
                         .encode()).hexdigest()[:16]
    copy = home() / "ollama-runtime" / key
    if not (copy / "bin" / "ollama").is_file():
        copy.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=copy.parent))
        try:
            (tmp / "bin").mkdir()
            shutil.copy2(binary.resolve(), tmp / "bin" / "ollama")
            (tmp / "lib" / "ollama").mkdir(parents=True)
            for f in lib.iterdir():
                if f.name in stubs:
                    (tmp / "lib" / "ollama" / f.name).symlink_to(stubs[f.name])
                else:
                    shutil.copy2(f, tmp / "lib" / "ollama" / f.name)
            for f in (tmp / "bin" / "ollama", *(tmp / "lib" / "ollama").iterdir()):
                if not f.is_symlink():
                    f.chmod(f.stat().st_mode | 0o200)  # the source is read-only: let the copy be removed
            tmp.rename(copy)  # complete or absent; another process that got there first wins
        except OSError:
            if not (copy / "bin" / "ollama").is_file():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return copy / "bin" / "ollama"


def missing() -> str | None:
    """Why the tier cannot run, in one line, or None."""
    binary = ollama_binary()
    if binary is None:
        return (f"no Ollama: set ${BIN_ENV}, put `ollama` on PATH, or build {BESIDE_REPO} "
                "(../shared/ollama/README.md)")
    if not os.access(binary, os.X_OK):
        return f"${BIN_ENV} is {binary}, which is not an executable file"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RealOllama:
    url: str
    models: Path  # its OLLAMA_MODELS: the store `--store` and `store:` targets write and read
    version: str
    log: Path
    process: subprocess.Popen

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def runner_command_lines(self) -> list[str]:
        """The command lines Ollama logged for the llama-server runners it started, oldest first."""
        return [line for line in self.log.read_text(errors="replace").splitlines()
                if "llama-server" in line and "--model" in line]


def _get(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


@contextlib.contextmanager
def running_ollama(root: Path, binary: Path | None = None, timeout: float = 120.0,
                   env: dict[str, str] | None = None) -> Iterator[RealOllama]:
    """`ollama serve` on 127.0.0.1 and a free port, with OLLAMA_MODELS and HOME under `root` (it writes
    ~/.ollama/id_ed25519 at its first start), in a process group of its own: stopping the group stops
    the llama-server runners it started too."""
    from localserve.llamacpp.process import dies_with_us

    binary = binary or ollama_binary()
    assert binary is not None, missing()
    binary = runnable(binary)
    (root / "home").mkdir(parents=True, exist_ok=True)
    models = root / "models"
    port = free_port()
    log = root / "ollama.log"
    environment = {**os.environ, "HOME": str(root / "home"), "OLLAMA_MODELS": str(models),
                   "OLLAMA_HOST": f"127.0.0.1:{port}",
                   "OLLAMA_NO_CLOUD": "1",  # otherwise it tries to reach its cloud service
                   **(env or {})}
    with open(log, "w") as out:
        process = subprocess.Popen(dies_with_us([str(binary), "serve"]), stdout=out, stderr=subprocess.STDOUT,
                                   env=environment, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        version = _wait_answering(url, process, log, timeout)
        yield RealOllama(url, models, version, log, process)
    finally:
        _stop(process)


def _wait_answering(url: str, process: subprocess.Popen, log: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ollama serve exited with {process.returncode} while starting:\n"
                               + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))
        with contextlib.suppress(OSError, ValueError):
            return str(_get(f"{url}/api/version")["version"])
        time.sleep(0.2)
    raise RuntimeError(f"ollama serve did not answer within {timeout:.0f} s:\n"
                       + "\n".join(log.read_text(errors="replace").splitlines()[-20:]))


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its llama-server runners are in it), SIGKILL if it lingers."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError):  # a runner that outlived the server
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=20)
