"""Where localserve keeps what it builds or downloads: outside any checkout, reused across runs."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """$LOCALSERVE_HOME, else ~/.cache/localserve."""
    return Path(os.environ.get("LOCALSERVE_HOME") or Path.home() / ".cache" / "localserve")


def repo_root() -> Path | None:
    """The source checkout when running from one (for templates/, modelfiles/, examples/)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() else None


def data_dir(name: str) -> Path:
    """A top-level data folder of the project (templates, modelfiles, examples)."""
    root = repo_root()
    if root is not None and (root / name).is_dir():
        return root / name
    # installed without the checkout: data folders are shipped inside the package
    return Path(__file__).resolve().parent / "_data" / name
