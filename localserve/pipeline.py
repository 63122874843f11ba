"""The stage runner: the only place that knows about caching, timing and the record of stages.

A stage is a plain function, the files it writes, and a content key computed from its inputs.
Stages are declared first (`stage`), each naming the stages whose outputs it reads (`needs`);
`need(name)` then runs a stage only when its outputs are missing or were produced under another key
(recorded in `<out>/.localserve/state.json`), and runs what it needs only then — so a re-run after
the 16-bit GGUF was deleted re-quantizes nothing that is still fresh, and converts nothing either.

Outputs themselves are written atomically by the stage functions (see fsutil), so a crash leaves
no output that looks complete, and no state entry either.
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


@dataclass
class _Stage:
    key: str
    outputs: list[Path]
    fn: Callable[[], dict | None]
    announce: str | None
    needs: tuple[str, ...]


class Pipeline:
    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.state_file = self.out_dir / ".localserve" / "state.json"
        try:
            self.state: dict[str, dict] = json.loads(self.state_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            self.state = {}
        self.records: list[StageRecord] = []
        self._stages: dict[str, _Stage] = {}
        self._done: dict[str, StageRecord] = {}

    # --- declaring and running ------------------------------------------------------------------
    def stage(self, name: str, key: str, outputs: list[Path], fn: Callable[[], dict | None],
              announce: str | None = None, needs: tuple[str, ...] = ()) -> None:
        """Declare a stage; `fn` may return a dict of facts to keep (sizes, smoke results)."""
        self._stages[name] = _Stage(key, [Path(p) for p in outputs], fn, announce, tuple(needs))

    def need(self, name: str) -> StageRecord:
        """The stage's record, running it (and first what it needs) unless it is fresh or done."""
        if name in self._done:
            return self._done[name]
        stage = self._stages[name]
        if self.is_fresh(name):
            record = StageRecord(name, stage.key, 0.0, True, self._rel(stage.outputs), self.info(name))
            step(f"{name}: up to date, skipped")
        else:
            for dependency in stage.needs:
                if dependency in self._stages:
                    self.need(dependency)
            if stage.announce:
                step(stage.announce)
            start = time.perf_counter()
            info = stage.fn() or {}
            record = StageRecord(name, stage.key, time.perf_counter() - start, False, self._rel(stage.outputs), info)
            self._save(name, stage.key, stage.outputs, info)
        self._done[name] = record
        self.records.append(record)
        return record

    def is_fresh(self, name: str) -> bool:
        """Its outputs exist and were produced under its current key."""
        stage = self._stages[name]
        entry = self.state.get(name)
        return bool(entry) and entry.get("key") == stage.key and all(p.exists() for p in stage.outputs)

    def info(self, name: str) -> dict:
        """The facts the stage returned when it last ran."""
        return dict(self.state.get(name, {}).get("info", {}))

    def moved(self, name: str, output: Path) -> None:
        """The stage's output now lives at `output` (e.g. the candidate --quant auto kept): a re-run
        finds it there under the same key."""
        stage = self._stages[name]
        stage.outputs = [Path(output)]
        self._save(name, stage.key, stage.outputs, self.info(name))

    def forget(self, *names: str) -> None:
        """Drop the stages whose outputs were deleted on purpose (intermediates)."""
        if any([self.state.pop(n, None) is not None for n in names]):
            write_json(self.state_file, self.state)

    # --- internals --------------------------------------------------------------------------------
    def _save(self, name: str, key: str, outputs: list[Path], info: dict) -> None:
        self.state[name] = {"key": key, "outputs": self._rel(outputs), "info": info}
        write_json(self.state_file, self.state)

    def _rel(self, paths: list[Path]) -> list[str]:
        out = []
        for p in paths:
            try:
                out.append(str(Path(p).resolve().relative_to(self.out_dir.resolve())))
            except ValueError:
                out.append(str(p))
        return out
