"""Where localserve keeps things outside any checkout.

Two roots, kept apart because they differ in worth:

- the cache, `home()`: what localserve builds or downloads (llama.cpp, venvs, base models, the Go
  renderer). Multi-GB, reused across runs, and safe to delete: it is rebuilt on demand.
- the state, `state_dir()`: what only the user's actions produce (the promote history, the
  version store). Small, and lost for good if deleted.
"""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """The cache root: $LOCALSERVE_HOME, else ~/.cache/localserve. Holds nothing that cannot be rebuilt."""
    return Path(os.environ.get("LOCALSERVE_HOME") or Path.home() / ".cache" / "localserve")


def state_dir() -> Path:
    """The state root: $LOCALSERVE_STATE_DIR, else $XDG_STATE_HOME/localserve, else
    ~/.local/state/localserve. Holds the user's records (promote history, versions); never a cache."""
    own = os.environ.get("LOCALSERVE_STATE_DIR")
    if own:
        return Path(own).expanduser()
    xdg = os.environ.get("XDG_STATE_HOME")
    # the XDG base-directory rules say a relative value is invalid and must be ignored
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "localserve"
    return Path.home() / ".local" / "state" / "localserve"


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
