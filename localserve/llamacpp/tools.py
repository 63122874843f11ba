"""llama.cpp built once from the source llama-cpp-python was made from: the bindings' library, the
command-line tools (`llama-imatrix`, `llama-quantize`) and `llama-server` share one CMake tree,

    $LOCALSERVE_HOME/llama.cpp-<version>/src     the llama.cpp tree vendored in the installed sdist
    $LOCALSERVE_HOME/llama.cpp-<version>/build   CMake's build folder; libraries and tools in bin/

Set-up builds only the library (`--binding`: libllama and ggml, copied into the llama_cpp package,
which is installed without compiling anything); the tools are built the first time a command needs
them (an importance matrix: `--imatrix-data`), and then only their own sources and llama.cpp's
`common` compile — the library's objects are already there. The bindings cover evaluation and plain
quantization, but computing an importance matrix exists only as a tool, and quantizing *with* one
needs the tool too (the bindings' `imatrix` field is a pointer to a C++ map).

    python -m localserve.llamacpp.tools --binding   # the library, into llama_cpp (scripts/bootstrap.sh)
    python -m localserve.llamacpp.tools --ensure    # the tools
    python -m localserve.llamacpp.tools --server    # llama-server (`localserve serve`, the Jinja parity)

`llama-server` is its own build (the server's sources and its HTTP library take a few minutes more), made
the first time something serves; `server_binary()` prefers $LOCALSERVE_LLAMA_SERVER, then `llama-server`
on PATH, and builds only when neither is there.

CMake builds incrementally, so an interrupted build resumes; a marker written after each complete
build says it is usable, and a lock file serialises concurrent builds.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

from ..errors import LocalserveError, SetupError, ToolError, UnknownName
from ..fsutil import atomic_dir, lock_file
from ..paths import home
from ..progress import bar, step
from . import vendor

# The tools localserve runs; building only these keeps the build to a few minutes.
TOOLS = ("llama-imatrix", "llama-quantize")
# What the bindings load: libllama and the ggml libraries it links to (found beside it: $ORIGIN).
LIBRARY_TARGET = "llama"
SERVER = "llama-server"
SERVER_ENV = "LOCALSERVE_LLAMA_SERVER"

# Why each flag: shared libraries, so the tools use the library the bindings load and each is
# compiled once; $ORIGIN, so a library or tool finds its siblings wherever it is copied; the server's
# targets configured (built only when asked for) but no tests/examples/UI (LLAMA_USE_PREBUILT_UI defaults
# on and would try to download the web UI: without it llama-server serves no web page, its API is whole).
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=ON",
    "-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON",
    "-DCMAKE_INSTALL_RPATH=$ORIGIN",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)

STDERR_TAIL_LINES = 25


def source_dir() -> Path:
    return home() / f"llama.cpp-{vendor.package_version()}" / "src"


def build_dir() -> Path:
    return home() / f"llama.cpp-{vendor.package_version()}" / "build"


def tool_path(name: str) -> Path:
    """Path of a llama.cpp tool binary, building the tools first if they are missing."""
    if name not in TOOLS:
        raise UnknownName("llama.cpp tool", name, TOOLS)
    path = build_dir() / "bin" / name
    if not _complete(build_dir(), "tools"):
        ensure_tools()
    return path


def server_binary() -> Path:
    """The llama-server to run: $LOCALSERVE_LLAMA_SERVER, else `llama-server` on PATH, else the one built in
    this tree (built now, once, when missing)."""
    chosen = os.environ.get(SERVER_ENV)
    if chosen:
        path = Path(chosen).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SetupError(f"${SERVER_ENV} is {chosen}, which is not an executable file",
                             f"point it at a llama-server binary, or unset it to build one in {build_dir()}")
        return path
    on_path = shutil.which(SERVER)
    if on_path:
        return Path(on_path)
    return _ensure("server", (SERVER,), "llama-server") / "bin" / SERVER


def ensure_tools() -> Path:
    """Build every tool in TOOLS unless already built; returns the build folder."""
    return _ensure("tools", TOOLS, f"llama.cpp tools ({', '.join(TOOLS)})")


def ensure_binding_library() -> Path:
    """libllama and its ggml libraries, built here and copied into the installed llama_cpp package
    (installed with CMAKE_ARGS=-DLLAMA_BUILD=OFF, so without a library of its own). Nothing to do
    when the package already has one. Returns the package's library folder."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise SetupError("the llama_cpp package (llama-cpp-python) is not installed",
                         "run scripts/bootstrap.sh")
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    if (lib / "libllama.so").is_file():
        return lib
    built = _ensure("library", (LIBRARY_TARGET,), "llama.cpp's library (libllama, ggml) for llama-cpp-python")
    with atomic_dir(lib) as tmp:
        for so in sorted((built / "bin").glob("lib*.so*")):
            shutil.copy2(so, tmp / so.name)  # symlinks copied as files, as the package's own wheel ships them
    step(f"llama-cpp-python loads {lib / 'libllama.so'}")
    return lib


def _ensure(what: str, targets: Sequence[str], label: str) -> Path:
    dest = build_dir()
    if _complete(dest, what):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with lock_file(dest.parent / ".build.lock",
                   lambda pid: step(f"waiting for pid {pid}, which is building llama.cpp in {dest}")):
        if not _complete(dest, what):  # another process may have finished while we waited
            _build(dest, targets, label)
            (dest / f".built-{what}").write_text(" ".join(targets) + "\n")
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


def _complete(dest: Path, what: str) -> bool:
    if (dest / f".built-{what}").is_file():
        return True
    # tools built by an earlier localserve: static binaries in a folder renamed into place whole
    return what == "tools" and (dest / "VERSION").is_file() and all((dest / "bin" / t).is_file() for t in TOOLS)


def _build(dest: Path, targets: Sequence[str], label: str) -> None:
    for exe in ("cmake", "c++"):
        if shutil.which(exe) is None:
            raise SetupError(f"building llama.cpp needs `{exe}`, which is not on PATH",
                             "install cmake and a C++ compiler (apt-get install cmake g++)")
    # vendor.locate() replaces the whole llama.cpp-<version>/ folder when it extracts the converter;
    # doing that first keeps it from ever deleting a build.
    vendor.locate(fetch=True)
    sdist = vendor.sdist_path(vendor.package_version())
    src = source_dir()
    if not (src / "CMakeLists.txt").is_file():
        with atomic_dir(src) as tmp:
            _extract_llama_cpp(sdist, tmp)
    step(f"building {label} from {sdist.name} in {dest} — once, a few minutes")
    configured = (dest / "CMakeCache.txt").is_file()
    if not configured and dest.exists():  # the static tools of an earlier layout: replaced by this tree
        shutil.rmtree(dest)
    if not configured or _stale_options(dest):
        # a tree configured by an earlier localserve (without the server's targets) is configured again:
        # CMake keeps what it built, and nothing already compiled is compiled twice
        gen = [] if configured else (["-G", "Ninja"] if shutil.which("ninja") else [])
        # the user's CMAKE_ARGS (e.g. -DGGML_CUDA=ON) apply here as they would to llama-cpp-python's build
        _run_build_step("cmake configure", ["cmake", "-S", str(src), "-B", str(dest), *gen, *CMAKE_FLAGS,
                                            *shlex.split(os.environ.get("CMAKE_ARGS", ""))])
    jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL") or str(min(os.cpu_count() or 1, 4))
    _run_build_step("cmake build", ["cmake", "--build", str(dest), "--target", *targets, "-j", jobs],
                    progress=True)
    for t in targets:
        built = dest / "bin" / (t if t.startswith("llama-") else f"lib{t}.so")
        if not built.is_file():
            raise ToolError("cmake", f"the build finished but produced no {built}")
    step(f"{label} ready in {dest / 'bin'}")


def _stale_options(dest: Path) -> list[str]:
    """The -DNAME=VALUE of CMAKE_FLAGS that the tree's CMakeCache.txt holds with another value."""
    cache = {}
    for line in (dest / "CMakeCache.txt").read_text(errors="replace").splitlines():
        name, colon, rest = line.partition(":")
        if colon and "=" in rest and not line.startswith(("#", "//")):
            cache[name] = rest.partition("=")[2]
    stale = []
    for flag in CMAKE_FLAGS:
        name, _, value = flag.removeprefix("-D").partition("=")
        if name in cache and cache[name].upper() != value.upper():
            stale.append(flag)
    return stale


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
    p.add_argument("--server", action="store_true", help="find llama-server, building it if there is none")
    p.add_argument("--binding", action="store_true",
                   help="build llama.cpp's library into the installed llama_cpp package if it has none")
    args = p.parse_args(argv)
    try:
        if args.binding:
            print(ensure_binding_library())
            return 0
        if args.server:
            print(server_binary())
            return 0
        path = ensure_tools() if args.ensure else build_dir()
    except LocalserveError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(path / "bin")
    return 0


if __name__ == "__main__":
    sys.exit(main())
