"""Promote / roll back: which version an alias (e.g. `demo:latest`) points at, and what it pointed
at before, kept in one small JSON file written atomically in the state directory (user records,
not cache; see `localserve.paths`):

    <state_dir>/history.json   ($LOCALSERVE_STATE_DIR, else $XDG_STATE_HOME/localserve,
                                else ~/.local/state/localserve)

    {"schema": 1,
     "aliases": {"<target>|demo:latest": {"events": [
         {"action": "promote", "version": "demo:q4_k_m", "digest": "<manifest sha256>", "at": "...",
          "rolled_back_at": null, "note": null},
         {"action": "rollback", "version": "demo:q8_0", "from": "demo:q4_k_m", "at": "..."}]}}}

`<target>` is the Ollama host URL or `store:<folder>`, so two servers never share a history. The
event log is append-only; the live chain is the promotions not yet rolled back. That is the seam the
roadmap's lifecycle grows from: an `evaluate` event can carry metrics beside a version, and an A/B
split is an alias whose event holds several versions with weights.

Earlier releases kept the file at $LOCALSERVE_HOME/history.json when that was set, else at
~/.config/localserve/history.json. On first use, if the state directory has no history yet, that
file is copied in (the old one is left in place and no longer read).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from ..errors import InputError, OllamaError
from ..fsutil import atomic_path, write_json
from ..paths import state_dir
from ..progress import step
from .names import parse_name

SCHEMA = 1


class Target(Protocol):
    """What promote/rollback needs from an Ollama server or an on-disk store."""

    def copy(self, source: str, destination: str) -> None: ...

    def manifest_digest(self, name: str) -> str | None: ...


def history_path() -> Path:
    """Where the promote history lives: history.json in the state directory."""
    return state_dir() / "history.json"


def legacy_history_path() -> Path:
    """Where releases before the state directory kept the history."""
    cache = os.environ.get("LOCALSERVE_HOME")
    base = Path(cache).expanduser() if cache else Path.home() / ".config" / "localserve"
    return base / "history.json"


def _history_file() -> Path:
    """history_path(), after bringing over a history an earlier release left behind."""
    path = history_path()
    legacy = legacy_history_path()
    if not path.exists() and legacy.is_file():
        with atomic_path(path) as tmp:
            shutil.copyfile(legacy, tmp)
        step(f"moved the promote history to {path} (copied from {legacy}, which is kept but no longer read)")
    return path


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"schema": SCHEMA, "aliases": {}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(f"the promote history {path} is not valid JSON ({e})",
                         "fix or move the file; it is only written by localserve") from None
    if data.get("schema") != SCHEMA:
        raise InputError(f"the promote history {path} has schema {data.get('schema')!r}, expected {SCHEMA}",
                         "upgrade localserve")
    return data


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


@dataclass(frozen=True)
class PromoteResult:
    alias: str
    version: str
    previous: str | None
    digest: str | None


def _live(events: list[dict]) -> list[dict]:
    return [e for e in events if e["action"] == "promote" and not e.get("rolled_back_at")]


def promote(target: Target, target_id: str, version: str, alias: str, note: str | None = None) -> PromoteResult:
    """Point `alias` at `version` (an Ollama copy) and record it."""
    v, a = parse_name(version).display, parse_name(alias).display
    if parse_name(version).key() == parse_name(alias).key():
        raise InputError(f"cannot promote {v} onto itself", "name a version tag, e.g. demo:q4_k_m --as demo:latest")
    digest = target.manifest_digest(v)
    if digest is None:
        raise OllamaError(f"{v} is not on {target_id}", "list the models with `localserve ls`")
    path = _history_file()
    data = _load(path)
    entry = data["aliases"].setdefault(f"{target_id}|{a}", {"events": []})
    live = _live(entry["events"])
    previous = live[-1]["version"] if live else None
    target.copy(v, a)
    entry["events"].append({"action": "promote", "version": v, "digest": digest, "at": _now(),
                            "rolled_back_at": None, "note": note})
    write_json(path, data)
    step(f"{a} -> {v}" + (f" (was {previous})" if previous else ""))
    return PromoteResult(a, v, previous, digest)


def rollback(target: Target, target_id: str, alias: str) -> PromoteResult:
    """Point `alias` back at the version promoted before the current one."""
    a_name = parse_name(alias)
    a = a_name.display
    path = _history_file()
    data = _load(path)
    entry = data["aliases"].get(f"{target_id}|{a}")
    live = _live(entry["events"]) if entry else []
    if len(live) < 2:
        raise InputError(f"{a} on {target_id} has no earlier promoted version to roll back to",
                         f"promote one first: `localserve promote NAME:TAG --as {a}`")
    current, previous = live[-1], live[-2]
    now_digest = target.manifest_digest(previous["version"])
    if now_digest is None:
        raise OllamaError(f"{previous['version']}, the version to roll back to, is gone from {target_id}",
                          "register or install it again, then retry")
    if now_digest != previous["digest"]:
        step(f"note: {previous['version']} was re-created since it was promoted; rolling back to its current content")
    target.copy(previous["version"], a)
    current["rolled_back_at"] = _now()
    entry["events"].append({"action": "rollback", "version": previous["version"], "from": current["version"],
                            "at": _now()})
    write_json(path, data)
    step(f"{a} -> {previous['version']} (rolled back from {current['version']})")
    return PromoteResult(a, previous["version"], current["version"], now_digest)


def alias_history(target_id: str, alias: str) -> list[dict]:
    entry = _load(_history_file())["aliases"].get(f"{target_id}|{parse_name(alias).display}")
    return list(entry["events"]) if entry else []
