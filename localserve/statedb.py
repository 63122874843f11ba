"""The SQLite files in the state directory (the version store, the router's request log, its captures): opened in WAL
mode with the connection in autocommit, migrated by numbered scripts recorded in `PRAGMA user_version`,
written in explicit transactions. One place, so both files open, migrate and refuse alike.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Sequence

from .errors import InputError


def open_state_db(path: Path, what: str, migrations: Sequence[str], pragmas: Sequence[str] = (),
                  check_same_thread: bool = True) -> sqlite3.Connection:
    """`path` opened (its folder made) and migrated to `len(migrations)`; `what` names the file in errors
    ("the version store", "the request log"). A damaged file, or one from a newer localserve, is one line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=check_same_thread)
        db.execute("PRAGMA journal_mode=WAL")
        for pragma in pragmas:
            db.execute(f"PRAGMA {pragma}")
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > len(migrations):
            raise InputError(f"{what} {path} has schema {version}, newer than this localserve ({len(migrations)})",
                             "upgrade localserve")
        for number, script in enumerate(migrations[version:], version + 1):
            with transaction(db):
                for statement in filter(str.strip, script.split(";")):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")
    except sqlite3.DatabaseError as e:
        raise InputError(f"{what} {path} cannot be opened ({e})",
                         "move the file away to start a new one; it is only written by localserve") from None
    return db


class transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception (the connection is in autocommit mode).
    Nested uses join the outer transaction."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.outermost = False

    def __enter__(self) -> sqlite3.Connection:
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.outermost = True
        return self.db

    def __exit__(self, exc_type, *_) -> None:
        if self.outermost:
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")
