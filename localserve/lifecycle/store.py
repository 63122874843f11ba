"""The version store: every registered export as an immutable version NAME:vN, with its lineage, its
registrations, its evaluations and every promotion event. One SQLite file (WAL) in the state directory.

Why SQLite: a version, its evaluations and the alias events must change together or not at all
(a promotion is an event and an Ollama copy; an evaluation belongs to one version), several
commands may run at once (WAL lets readers go on while one writes), and the history must survive
a crash mid-write. Every write below is one transaction.

Schema changes are numbered migrations (`MIGRATIONS`), applied in order and recorded in
`PRAGMA user_version`; the promote history of earlier releases (history.json) is imported once.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from ..errors import InputError, UnknownName
from ..lineage import ExportRecord, now
from ..paths import state_dir
from ..statedb import open_state_db, transaction

DB_FILE = "localserve.db"

MIGRATIONS: tuple[str, ...] = (
    # 1: versions, where they are registered, evaluations, alias events
    """
    CREATE TABLE versions (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        number INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        export_dir TEXT NOT NULL,
        record TEXT NOT NULL,            -- the ExportRecord (localserve.json) as JSON
        fingerprint TEXT NOT NULL,       -- sha256s of the artifacts: the same export is the same version
        parent_id INTEGER REFERENCES versions(id),
        data_file TEXT,
        data_sha256 TEXT,
        training TEXT NOT NULL DEFAULT '{}',
        UNIQUE (name, number)
    );
    CREATE TABLE registrations (
        id INTEGER PRIMARY KEY,
        version_id INTEGER NOT NULL REFERENCES versions(id),
        target TEXT NOT NULL,            -- an Ollama URL, or store:<folder>
        model TEXT NOT NULL,             -- the Ollama name, e.g. demo:v3
        manifest_digest TEXT NOT NULL,
        manifest TEXT,                   -- the manifest's bytes where they can be read (an on-disk store)
        recipe TEXT NOT NULL,            -- how it was created: GGUF file, blob digest, template, parameters
        at TEXT NOT NULL
    );
    CREATE TABLE evaluations (
        id INTEGER PRIMARY KEY,
        version_id INTEGER REFERENCES versions(id),
        suite TEXT NOT NULL,
        suite_sha256 TEXT NOT NULL,
        target TEXT NOT NULL,
        passed INTEGER NOT NULL,
        total INTEGER NOT NULL,
        score REAL NOT NULL,
        run TEXT NOT NULL,               -- the EvalRun as JSON: every case, answer and assertion
        at TEXT NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        at TEXT NOT NULL,
        target TEXT NOT NULL,
        alias TEXT NOT NULL,
        action TEXT NOT NULL,            -- promote, rollback, refuse
        version TEXT,                    -- the version the alias points at after the event (NAME:TAG)
        previous TEXT,
        digest TEXT,                     -- the manifest digest the alias has after the event
        rolled_back_at TEXT,
        payload TEXT NOT NULL DEFAULT '{}'  -- the decision's evidence: scores, flips, p-value
    );
    CREATE INDEX events_alias ON events (target, alias);
    CREATE TABLE imported (source TEXT PRIMARY KEY, at TEXT NOT NULL);
    """,
    # 2: registrations begun and not finished: a run killed between creating NAME:vN at a place and
    # recording it leaves this row, so that the next run may replace that NAME:vN instead of refusing it
    """
    CREATE TABLE pending_registrations (
        version_id INTEGER NOT NULL REFERENCES versions(id),
        target TEXT NOT NULL,
        model TEXT NOT NULL,
        at TEXT NOT NULL,
        PRIMARY KEY (version_id, target, model)
    );
    """,
)


@dataclass(frozen=True)
class Version:
    id: int
    name: str
    number: int
    created_at: str
    export_dir: Path
    record: ExportRecord
    parent: str | None
    data_file: str | None
    data_sha256: str | None
    training: dict

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.number}"

    def to_json(self) -> dict:
        return {"version": self.ref, "name": self.name, "number": self.number, "created_at": self.created_at,
                "export_dir": str(self.export_dir), "parent": self.parent, "data_file": self.data_file,
                "data_sha256": self.data_sha256, "training": self.training, "record": self.record.to_json()}


@dataclass(frozen=True)
class Registration:
    version_id: int
    target: str
    model: str
    manifest_digest: str
    manifest: bytes | None
    recipe: dict
    at: str


def parse_version_ref(ref: str) -> tuple[str, int]:
    """'demo:v3' -> ('demo', 3)."""
    name, sep, tag = ref.rpartition(":")
    if not sep or not name or not tag.startswith("v") or not tag[1:].isdigit():
        raise InputError(f"{ref!r} is not a version", "name one as NAME:vN, e.g. demo:v2 (`localserve versions NAME`)")
    return name, int(tag[1:])


class VersionStore:
    """The store at `path` (default: STATE_DIR/localserve.db), created and migrated on first use."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path is not None else state_dir() / DB_FILE
        self.db = open_state_db(self.path, "the version store", MIGRATIONS, pragmas=("foreign_keys=ON",))
        self.db.row_factory = sqlite3.Row

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "VersionStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def transaction(self) -> transaction:
        return transaction(self.db)

    # --- versions ---------------------------------------------------------------------------------
    def add_version(self, name: str, record: ExportRecord, export_dir: Path, *, parent: str | None = None,
                    data_file: Path | None = None, data_sha256: str | None = None,
                    training: dict | None = None) -> tuple[Version, bool]:
        """(the version of this export, whether it is new): an export whose artifacts a version of
        `name` already has is that version; otherwise the next number."""
        fingerprint = _fingerprint(record)
        with self.transaction():
            row = self.db.execute("SELECT * FROM versions WHERE name = ? AND fingerprint = ? ORDER BY number DESC",
                                  (name, fingerprint)).fetchone()
            if row is not None:
                return self._version(row), False
            (number,) = self.db.execute("SELECT COALESCE(MAX(number), 0) + 1 FROM versions WHERE name = ?",
                                        (name,)).fetchone()
            parent_id = self.version(parent).id if parent else None
            cur = self.db.execute(
                "INSERT INTO versions (name, number, created_at, export_dir, record, fingerprint, parent_id, data_file,"
                " data_sha256, training) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (name, number, now(), str(Path(export_dir).resolve()), json.dumps(record.to_json()), fingerprint,
                 parent_id, str(data_file) if data_file else None, data_sha256, json.dumps(training or {})))
            return self._by_id(cur.lastrowid), True

    def version(self, ref: str) -> Version:
        name, number = parse_version_ref(ref)
        row = self.db.execute("SELECT * FROM versions WHERE name = ? AND number = ?", (name, number)).fetchone()
        if row is None:
            known = [v.ref for v in self.versions(name)]
            raise UnknownName("version", ref, known or ["(none: register an export of this name first)"],
                              f"`localserve versions {name}` lists them")
        return self._version(row)

    def versions(self, name: str) -> list[Version]:
        rows = self.db.execute("SELECT * FROM versions WHERE name = ? ORDER BY number", (name,)).fetchall()
        return [self._version(r) for r in rows]

    def latest(self, name: str) -> Version | None:
        row = self.db.execute("SELECT * FROM versions WHERE name = ? ORDER BY number DESC LIMIT 1", (name,)).fetchone()
        return self._version(row) if row else None

    def _by_id(self, version_id: int) -> Version:
        return self._version(self.db.execute("SELECT * FROM versions WHERE id = ?", (version_id,)).fetchone())

    def _version(self, row: sqlite3.Row) -> Version:
        parent = None
        if row["parent_id"] is not None:
            p = self.db.execute("SELECT name, number FROM versions WHERE id = ?", (row["parent_id"],)).fetchone()
            parent = f"{p['name']}:v{p['number']}"
        return Version(row["id"], row["name"], row["number"], row["created_at"], Path(row["export_dir"]),
                       ExportRecord.from_json(json.loads(row["record"]), f"{self.path} (version {row['name']}:v{row['number']})"),
                       parent, row["data_file"], row["data_sha256"], json.loads(row["training"]))

    def discard_version(self, version: Version) -> bool:
        """Remove `version` if nothing refers to it (no registration, begun or done, no evaluation, event or
        child version): the version of a registration that failed. True if it was removed."""
        with self.transaction():
            for sql, args in (("SELECT 1 FROM registrations WHERE version_id = ?", (version.id,)),
                              ("SELECT 1 FROM pending_registrations WHERE version_id = ?", (version.id,)),
                              ("SELECT 1 FROM evaluations WHERE version_id = ?", (version.id,)),
                              ("SELECT 1 FROM versions WHERE parent_id = ?", (version.id,)),
                              ("SELECT 1 FROM events WHERE version = ?", (version.ref,))):
                if self.db.execute(sql, args).fetchone():
                    return False
            self.db.execute("DELETE FROM versions WHERE id = ?", (version.id,))
            return True

    # --- registrations ------------------------------------------------------------------------------
    def begin_registration(self, version: Version, target: str, model: str) -> None:
        """Note that `model` is being created at `target` for `version` (see `pending_registration`)."""
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO pending_registrations (version_id, target, model, at) "
                            "VALUES (?, ?, ?, ?)", (version.id, target, model, now()))

    def pending_registration(self, version: Version, target: str, model: str) -> bool:
        """Whether a registration of `model` at `target` for `version` was begun and never finished or undone."""
        return self.db.execute("SELECT 1 FROM pending_registrations WHERE version_id = ? AND target = ? AND model = ?",
                               (version.id, target, model)).fetchone() is not None

    def end_registration(self, version: Version, target: str, model: str) -> None:
        """The begun registration left nothing at `target`: forget it."""
        with self.transaction():
            self.db.execute("DELETE FROM pending_registrations WHERE version_id = ? AND target = ? AND model = ?",
                            (version.id, target, model))

    def add_registration(self, version: Version, target: str, model: str, manifest_digest: str, recipe: dict,
                         manifest: bytes | None = None) -> None:
        with self.transaction():
            self.db.execute("INSERT INTO registrations (version_id, target, model, manifest_digest, manifest, recipe, "
                            "at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (version.id, target, model, manifest_digest, manifest.decode() if manifest else None,
                             json.dumps(recipe), now()))
            self.db.execute("DELETE FROM pending_registrations WHERE version_id = ? AND target = ? AND model = ?",
                            (version.id, target, model))

    def registrations(self, version: Version, target: str | None = None) -> list[Registration]:
        sql = "SELECT * FROM registrations WHERE version_id = ?" + (" AND target = ?" if target else "") + " ORDER BY id"
        rows = self.db.execute(sql, (version.id, target) if target else (version.id,)).fetchall()
        return [Registration(r["version_id"], r["target"], r["model"], r["manifest_digest"],
                             r["manifest"].encode() if r["manifest"] else None, json.loads(r["recipe"]), r["at"])
                for r in rows]

    def registration_by_digest(self, target: str, digest: str) -> Registration | None:
        row = self.db.execute("SELECT * FROM registrations WHERE target = ? AND manifest_digest = ? ORDER BY id DESC",
                              (target, digest)).fetchone()
        if row is None:
            return None
        return Registration(row["version_id"], row["target"], row["model"], row["manifest_digest"],
                            row["manifest"].encode() if row["manifest"] else None, json.loads(row["recipe"]), row["at"])

    # --- evaluations ---------------------------------------------------------------------------------
    def add_evaluation(self, run: Any, version: Version | None = None) -> int:
        """Record an EvalRun (localserve.lifecycle.results), attached to `version` when given."""
        with self.transaction():
            cur = self.db.execute(
                "INSERT INTO evaluations (version_id, suite, suite_sha256, target, passed, total, score, run, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (version.id if version else None, run.suite, run.suite_sha256, run.target, run.passed, len(run.cases),
                 run.score, json.dumps(run.to_json()), now()))
            return cur.lastrowid

    def evaluations(self, version: Version) -> list[dict]:
        rows = self.db.execute("SELECT id, suite, suite_sha256, target, passed, total, score, at FROM evaluations "
                               "WHERE version_id = ? ORDER BY id", (version.id,)).fetchall()
        return [dict(r) for r in rows]

    def evaluation_run(self, evaluation_id: int) -> dict:
        """The whole EvalRun (as JSON) of an evaluation: every case, answer and assertion."""
        row = self.db.execute("SELECT run FROM evaluations WHERE id = ?", (evaluation_id,)).fetchone()
        return json.loads(row["run"]) if row else {}

    # --- alias events --------------------------------------------------------------------------------
    def add_event(self, target: str, alias: str, action: str, version: str | None, *, previous: str | None = None,
                  digest: str | None = None, payload: dict | None = None, rolls_back: int | None = None,
                  at: str | None = None) -> int:
        with self.transaction():
            if rolls_back is not None:
                self.db.execute("UPDATE events SET rolled_back_at = ? WHERE id = ?", (at or now(), rolls_back))
            cur = self.db.execute(
                "INSERT INTO events (at, target, alias, action, version, previous, digest, payload) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (at or now(), target, alias, action, version, previous, digest, json.dumps(payload or {})))
            return cur.lastrowid

    def events(self, target: str | None = None, alias: str | None = None, version: str | None = None) -> list[dict]:
        clauses, args = [], []
        for column, value in (("target", target), ("alias", alias), ("version", version)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = self.db.execute(f"SELECT * FROM events{where} ORDER BY id", args).fetchall()
        return [{**dict(r), "payload": json.loads(r["payload"])} for r in rows]

    def live_promotions(self, target: str, alias: str) -> list[dict]:
        """The promotions of `alias` not rolled back, oldest first: the last is what the alias is now."""
        return [e for e in self.events(target, alias) if e["action"] == "promote" and not e["rolled_back_at"]]

    # --- the promote history of earlier releases -----------------------------------------------------
    def import_history(self, path: Path) -> int:
        """Import history.json's events once (it is kept, and no longer written); returns how many."""
        path = Path(path)
        if not path.is_file():
            return 0
        with self.transaction():
            if self.db.execute("SELECT 1 FROM imported WHERE source = ?", (str(path.resolve()),)).fetchone():
                return 0
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                aliases = data["aliases"].items()
            except (ValueError, KeyError, AttributeError, UnicodeDecodeError) as e:
                raise InputError(f"the promote history {path} cannot be read ({e})",
                                 "move it away; its events will not be imported") from None
            n = 0
            for key, entry in aliases:
                target, _, alias = key.rpartition("|")
                for event in entry.get("events", []):
                    self.db.execute(
                        "INSERT INTO events (at, target, alias, action, version, previous, digest, rolled_back_at, "
                        "payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (event.get("at") or now(), target, alias, event["action"], event.get("version"),
                         event.get("from"), event.get("digest"), event.get("rolled_back_at"),
                         json.dumps({"note": event.get("note"), "imported_from": str(path)})))
                    n += 1
            self.db.execute("INSERT INTO imported (source, at) VALUES (?, ?)", (str(path.resolve()), now()))
            return n


def _fingerprint(record: ExportRecord) -> str:
    import hashlib

    parts = sorted(f"{a.file}:{a.sha256}" for a in record.artifacts) + sorted(f"{t.file}:{t.sha256}" for t in record.tenants)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def iter_names(store: VersionStore) -> Iterator[str]:
    for (name,) in store.db.execute("SELECT DISTINCT name FROM versions ORDER BY name"):
        yield name
