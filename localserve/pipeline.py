"""The stage runner: the only place that knows about caching, timing and the record of stages.

A stage is a plain function plus a content key computed from its inputs. The runner skips the
stage when its outputs exist and were produced under the same key (recorded in
`<out>/.localserve/state.json`), times it, and records it for the lineage. Outputs themselves are
written atomically by the stage functions (see fsutil), so a crash leaves no output that looks
complete, and no state entry either.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .fsutil import write_json
from .progress import step


def content_key(*parts: Any) -> str:
    """A stable hash of JSON-able parts (input hashes, versions, options)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


@dataclass
class StageRecord:
    name: str
    key: str
    seconds: float
    skipped: bool
    outputs: list[str]
    info: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "key": self.key, "seconds": round(self.seconds, 3), "skipped": self.skipped,
                "outputs": self.outputs, **({"info": self.info} if self.info else {})}


class Pipeline:
    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.state_file = self.out_dir / ".localserve" / "state.json"
        try:
            self.state: dict[str, dict] = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.state = {}
        self.records: list[StageRecord] = []

    def is_fresh(self, name: str, key: str, outputs: list[Path]) -> bool:
        entry = self.state.get(name)
        return bool(entry) and entry.get("key") == key and all(Path(p).exists() for p in outputs)

    def cached_info(self, name: str) -> dict:
        return dict(self.state.get(name, {}).get("info", {}))

    def run(self, name: str, key: str, outputs: list[Path], fn: Callable[[], dict | None],
            announce: str | None = None) -> StageRecord:
        """Run `fn` unless fresh; `fn` may return a dict of facts to keep (smoke results, sizes)."""
        rel = [self._rel(p) for p in outputs]
        if self.is_fresh(name, key, outputs):
            record = StageRecord(name, key, 0.0, True, rel, self.cached_info(name))
            step(f"{name}: up to date, skipped")
        else:
            if announce:
                step(announce)
            start = time.perf_counter()
            info = fn() or {}
            record = StageRecord(name, key, time.perf_counter() - start, False, rel, info)
            self.state[name] = {"key": key, "outputs": rel, "info": info}
            write_json(self.state_file, self.state)
        self.records.append(record)
        return record

    def forget(self, name: str) -> None:
        if self.state.pop(name, None) is not None:
            write_json(self.state_file, self.state)

    def _rel(self, p: Path) -> str:
        try:
            return str(Path(p).resolve().relative_to(self.out_dir.resolve()))
        except ValueError:
            return str(p)
