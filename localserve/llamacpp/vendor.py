"""llama.cpp's own converter (convert_hf_to_gguf.py, convert_lora_to_gguf.py, gguf-py), located.

The converter must come from the same llama.cpp source that the installed llama-cpp-python was
built from: a converter newer than the runtime writes metadata (pre-tokenizer names, tensor
layouts) the runtime may not know. llama-cpp-python's wheel does not ship the converter, but its
sdist vendors the whole llama.cpp tree, so we fetch that exact sdist from PyPI once and extract
the Python parts into $LOCALSERVE_HOME/llama.cpp-<version>/.

Override with LOCALSERVE_LLAMA_CPP_DIR=/path/to/llama.cpp (a checkout with the converter in it).

    python -m localserve.llamacpp.vendor --ensure     # done by scripts/bootstrap.sh
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..errors import SetupError, ToolError
from ..fsutil import atomic_dir
from ..paths import home
from ..progress import step

_PY_PARTS = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


@dataclass(frozen=True)
class LlamaCpp:
    """The converter tree and the identity of the llama.cpp source it came from."""

    root: Path
    package_version: str  # llama-cpp-python version
    commit: str  # llama.cpp git commit of the vendored tree ("unknown" for a user override)

    @property
    def convert_hf(self) -> Path:
        return self.root / "convert_hf_to_gguf.py"

    @property
    def convert_lora(self) -> Path:
        return self.root / "convert_lora_to_gguf.py"

    def python_env(self) -> dict[str, str]:
        """Environment for running the converter with its own gguf-py first on the path."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(self.root / "gguf-py"), str(self.root), env.get("PYTHONPATH", "")) if p
        )
        env.pop("NO_LOCAL_GGUF", None)
        # The converter allocates and frees one tensor after another. glibc raises its mmap threshold
        # after each large free, so later tensors land on the heap and their freed memory is kept:
        # the process grows towards the model's size. A fixed threshold returns each tensor's memory
        # when it is freed, so memory follows the largest tensor.
        env.setdefault("MALLOC_MMAP_THRESHOLD_", str(1 << 20))
        return env


def package_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError as e:
        raise SetupError(
            "llama-cpp-python is not installed",
            "run scripts/bootstrap.sh (or pip install llama-cpp-python==0.3.36)",
        ) from e


def sdist_path(version: str | None = None) -> Path:
    """The llama-cpp-python sdist of the installed version, downloaded once from PyPI."""
    version = version or package_version()
    dest = home() / "sdist" / f"llama_cpp_python-{version}.tar.gz"
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    step(f"downloading the llama-cpp-python {version} sdist (llama.cpp's converter lives in it)")
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        # --no-binary for this package only: ":all:" would reach the build backend pip installs to read
        # the sdist's metadata, and compile cmake and ninja from source on a machine without a cache.
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
               "--disable-pip-version-check", "-q", "-d", tmp, f"llama-cpp-python=={version}"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if proc.returncode != 0 or not got:
            raise ToolError("pip download", f"could not fetch the llama-cpp-python {version} sdist",
                            _tail(proc.stderr), hint="check access to PyPI, or set LOCALSERVE_LLAMA_CPP_DIR "
                            "to a llama.cpp checkout")
        os.replace(got[0], dest)
    return dest


def locate(fetch: bool = True) -> LlamaCpp:
    """The converter tree, extracting it from the sdist on first use when `fetch`."""
    override = os.environ.get("LOCALSERVE_LLAMA_CPP_DIR")
    if override:
        root = Path(override)
        if not (root / "convert_hf_to_gguf.py").is_file():
            raise SetupError(f"LOCALSERVE_LLAMA_CPP_DIR={root} has no convert_hf_to_gguf.py",
                             "point it at a llama.cpp checkout, or unset it")
        return LlamaCpp(root, package_version(), _read_commit(root))
    version = package_version()
    root = home() / f"llama.cpp-{version}"
    if not (root / "convert_hf_to_gguf.py").is_file():
        if not fetch:
            raise SetupError(f"llama.cpp's converter is not in {root}",
                             "run `python -m localserve.llamacpp.vendor --ensure` (scripts/bootstrap.sh does)")
        _extract(sdist_path(version), root)
    return LlamaCpp(root, version, _read_commit(root))


def _extract(sdist: Path, root: Path) -> None:
    step(f"extracting llama.cpp's converter into {root}")
    with tarfile.open(sdist) as tar, atomic_dir(root) as tmp:
        top = tar.getmembers()[0].name.split("/")[0]
        vendor = f"{top}/vendor/llama.cpp/"
        head = f"{top}/.git/modules/vendor/llama.cpp/HEAD"
        members = []
        for m in tar.getmembers():
            if m.name == head and m.isfile():
                (tmp / "LLAMA_CPP_COMMIT").write_bytes(tar.extractfile(m).read())
            if not m.name.startswith(vendor) or not (m.isfile() or m.isdir()):
                continue
            rel = m.name[len(vendor):]
            if any(rel == p or rel.startswith(p) for p in _PY_PARTS if p.endswith("/")) or rel in _PY_PARTS:
                m.name = rel
                members.append(m)
        tar.extractall(tmp, members=members, filter="data")


def _read_commit(root: Path) -> str:
    f = root / "LLAMA_CPP_COMMIT"
    if f.is_file():
        return f.read_text().strip()
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["--ensure"], ["--print"]):
        print("usage: python -m localserve.llamacpp.vendor --ensure|--print", file=sys.stderr)
        return 2
    tree = locate(fetch=True)
    print(f"llama.cpp converter: {tree.root} (llama-cpp-python {tree.package_version}, commit {tree.commit[:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
