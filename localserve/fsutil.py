"""Files are complete or absent: atomic writes, hashing, disk-space checks."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from .errors import DiskSpaceError

CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike, progress=None) -> str:
    """Hex sha256 of a file, streamed; `progress(n_bytes)` is called per chunk when given."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest()


def sha256_tree(path: str | os.PathLike) -> str:
    """sha256 over a folder's regular files (relative name + content), or of a single file.

    Shows a progress bar in bytes: hashing a large base model takes a while.
    """
    from .progress import bar

    p = Path(path)
    files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
    with bar(sum(f.stat().st_size for f in files), f"hash {p.name}") as b:
        if p.is_file():
            return sha256_file(p, b.update)
        h = hashlib.sha256()
        for f in files:
            h.update(f.relative_to(p).as_posix().encode() + b"\0")
            h.update(sha256_file(f, b.update).encode() + b"\n")
        return h.hexdigest()


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `dest`; rename it onto `dest` only if the block succeeds.

    The temp name starts with '.' and ends with '.partial' so nothing mistakes it for a result;
    it is removed on any failure, including KeyboardInterrupt.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=f"{suffix}.partial", dir=dest.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; other users (ollama) must read it
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike) -> Iterator[Path]:
    """Like `atomic_path` for a folder: built in a temp folder, renamed into place at the end."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result should look like mkdir's
    try:
        yield tmp
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(dest: str | os.PathLike, text: str) -> Path:
    with atomic_path(dest) as tmp:
        # newline="" keeps LF-only output on every platform (Modelfiles must not carry CR).
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return Path(dest)


def write_json(dest: str | os.PathLike, data: Any) -> Path:
    return write_text(dest, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def require_free_space(folder: str | os.PathLike, needed_bytes: int, what: str) -> None:
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise DiskSpaceError(
            f"not enough free disk in {probe} for {what}: need {human_bytes(needed_bytes)}, "
            f"{human_bytes(free)} free",
            "free some space or pass --out on a larger disk",
        )


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def remove_partials(folder: str | os.PathLike) -> list[Path]:
    """Remove what `atomic_path` and `atomic_dir` were writing under `folder` when their process was
    killed (`.NAME.XXXX.partial`); the paths removed. Only for a folder whose lock is held."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in sorted(folder.rglob(".*.partial"), key=lambda p: len(p.parts)):
        if not path.exists() and not path.is_symlink():  # inside a partial folder removed above
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def lock_file(path: str | os.PathLike, on_busy: Callable[[str], None]) -> Iterator[None]:
    """Hold the exclusive lock of the file `path` (created holding our pid, removed on release). When
    another process holds it, `on_busy(its pid)` runs first: it raises to refuse, or returns to wait.
    The kernel drops the lock of a killed process, so a lock file left by a crash is simply taken over."""
    import fcntl

    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            try:
                on_busy(holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        # the file may have been released and removed between our open and our lock: then lock anew
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, what: str = "localserve run") -> Iterator[None]:
    """Hold the lock of `folder` (a file beside it, `.NAME.lock`) for one run, or refuse at once,
    naming the process that holds it. A lock left by a killed run is taken over (see `lock_file`), and
    the half-written files that run left in `folder` are removed: nothing else writes there while the
    lock is held."""
    from .errors import InputError

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)

    def refuse(holder: str) -> None:
        raise InputError(f"another {what} (pid {holder}) is writing {folder}",
                         "wait for it to finish, or write somewhere else with --out")

    with lock_file(folder.parent / f".{folder.name}.lock", refuse):
        remove_partials(folder)
        yield
