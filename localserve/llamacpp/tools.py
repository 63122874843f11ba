"""llama.cpp's command-line tools (`llama-imatrix`, `llama-quantize`), built once from the same source.

The Python bindings cover evaluation and plain quantization, but computing an importance matrix
exists only as a tool, and quantizing *with* one needs the tool too (the bindings' `imatrix`
field is a pointer to a C++ map). So the tools are compiled from the llama.cpp tree vendored in
the very llama-cpp-python sdist that is installed, into

    $LOCALSERVE_HOME/llama.cpp-<version>/build/bin/<tool>

on first use (about 5 minutes on 2 cores). The folder is built beside its final name and renamed
into place at the end, so it is either complete or absent; a lock file serialises concurrent builds.

    python -m localserve.llamacpp.tools --ensure      # build now (scripts/bootstrap.sh does this)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

from ..errors import LocalserveError, SetupError, ToolError, UnknownName
from ..fsutil import atomic_dir
from ..paths import home
from ..progress import bar, step
from . import vendor

# The tools localserve runs; building only these keeps the first build to a few minutes.
TOOLS = ("llama-imatrix", "llama-quantize")

# Why each flag: static binaries survive deleting the build tree; no HTTPS/UI/server code is
# needed, and LLAMA_USE_PREBUILT_UI defaults on and would try to download the web UI.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)

STDERR_TAIL_LINES = 25


def build_dir() -> Path:
    return home() / f"llama.cpp-{vendor.package_version()}" / "build"


def tool_path(name: str) -> Path:
    """Path of a llama.cpp tool binary, building the tools first if they are missing."""
    if name not in TOOLS:
        raise UnknownName("llama.cpp tool", name, TOOLS)
    path = build_dir() / "bin" / name
    if not path.is_file():
        ensure_tools()
    return path


def ensure_tools() -> Path:
    """Build every tool in TOOLS unless already built; returns the build folder."""
    dest = build_dir()
    if _complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _lock(dest.parent / ".build.lock"):
        if _complete(dest):  # another process finished while we waited
            return dest
        _build(dest)
    return dest


def run_tool(name: str, args: Sequence[str | os.PathLike], *, timeout: float | None = None,
             hint: str | None = None) -> subprocess.CompletedProcess:
    """Run a tool; a non-zero exit raises ToolError naming the tool, the command and stderr's tail."""
    from .process import dies_with_us, killed

    cmd = [str(tool_path(name)), *map(str, args)]
    try:
        proc = subprocess.run(dies_with_us(cmd), capture_output=True, text=True, errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise ToolError(name, f"`{_shell(cmd)}` did not finish within {timeout:.0f} s",
                        _tail(e.stderr or ""), hint) from None
    if (failed := killed(name, f"`{_shell(cmd)}`", proc.returncode)) is not None:
        raise failed
    if proc.returncode != 0:
        raise ToolError(name, f"`{_shell(cmd)}` exited with code {proc.returncode}",
                        _tail(proc.stderr or proc.stdout), hint)
    return proc


def _complete(dest: Path) -> bool:
    return all((dest / "bin" / t).is_file() for t in TOOLS)


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _build(dest: Path) -> None:
    for exe in ("cmake", "c++"):
        if shutil.which(exe) is None:
            raise SetupError(f"building llama.cpp's tools needs `{exe}`, which is not on PATH",
                             "install cmake and a C++ compiler (apt-get install cmake g++)")
    # vendor.locate() replaces the whole llama.cpp-<version>/ folder when it extracts the converter;
    # doing that first keeps it from ever deleting a finished build.
    vendor.locate(fetch=True)
    version = vendor.package_version()
    sdist = vendor.sdist_path(version)
    step(f"building llama.cpp tools ({', '.join(TOOLS)}) from {sdist.name} into {dest} "
         "— once, about 5 minutes")
    with atomic_dir(dest) as tmp:
        src = tmp / "src"
        work = tmp / "cmake"
        _extract_llama_cpp(sdist, src)
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        _run_build_step("cmake configure",
                        ["cmake", "-S", str(src), "-B", str(work), *gen, *CMAKE_FLAGS])
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(min(os.cpu_count() or 1, 4))
        _run_build_step("cmake build",
                        ["cmake", "--build", str(work), "--target", *TOOLS, "-j", jobs],
                        progress=True)
        (tmp / "bin").mkdir()
        for t in TOOLS:
            built = next((p for p in work.rglob(t) if p.is_file() and os.access(p, os.X_OK)), None)
            if built is None:
                raise ToolError("cmake", f"the build finished but produced no {t} under {work}")
            shutil.copy2(built, tmp / "bin" / t)
        (tmp / "VERSION").write_text(f"llama-cpp-python {version}\n")
        # The binaries are static: the source and object files (hundreds of MB) are not needed.
        shutil.rmtree(src)
        shutil.rmtree(work)
    step(f"llama.cpp tools ready in {dest / 'bin'}")


def _extract_llama_cpp(sdist: Path, dest: Path) -> None:
    """Extract `<top>/vendor/llama.cpp/` from the sdist into `dest`."""
    step(f"extracting llama.cpp source from {sdist.name}")
    with tarfile.open(sdist) as tar:
        members = []
        for m in tar.getmembers():
            parts = Path(m.name).parts
            if len(parts) > 3 and parts[1:3] == ("vendor", "llama.cpp"):
                m.name = str(Path(*parts[3:]))
                members.append(m)
        if not members:
            raise SetupError(f"{sdist} holds no vendor/llama.cpp tree",
                             "delete it so it is downloaded again")
        # filter="data" refuses absolute paths, `..`, device files and links out of the tree.
        tar.extractall(dest, members=members, filter="data")


_NINJA_PROGRESS = re.compile(r"^\[(\d+)/(\d+)\]")
_MAKE_PROGRESS = re.compile(r"^\[\s*(\d+)%\]")


def _run_build_step(what: str, cmd: list[str], progress: bool = False) -> None:
    with tempfile.TemporaryFile("w+", errors="replace") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, errors="replace")
        lines: list[str] = []
        assert proc.stdout is not None
        with bar(None, what, unit="step") if progress else contextlib.nullcontext() as b:
            for line in proc.stdout:
                lines = (lines + [line])[-STDERR_TAIL_LINES:]
                if b is None:
                    continue
                if m := _NINJA_PROGRESS.match(line):
                    b.total = int(m.group(2))
                    b.n = int(m.group(1))
                    b.refresh()
                elif m := _MAKE_PROGRESS.match(line):
                    b.total = 100
                    b.n = int(m.group(1))
                    b.refresh()
        code = proc.wait()
        if code != 0:
            err.seek(0)
            tail = _tail(err.read()) or "".join(lines)
            raise ToolError("cmake", f"{what} failed: `{_shell(cmd)}` exited with code {code}", tail,
                            "check the compiler output above; the build leaves nothing behind")


def _tail(text: str, n: int = STDERR_TAIL_LINES) -> str:
    return "\n".join((text or "").rstrip().splitlines()[-n:])


def _shell(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m localserve.llamacpp.tools", description=__doc__.split("\n")[0])
    p.add_argument("--ensure", action="store_true", help="build the tools if they are missing")
    args = p.parse_args(argv)
    try:
        path = ensure_tools() if args.ensure else build_dir()
    except LocalserveError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(path / "bin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
