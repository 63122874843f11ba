"""User state lives apart from the cache: where the state directory is, that the promote history (the
version store) is written there (never into the cache), that a history.json an earlier release left
behind is imported once without touching it, and that every test runs on a temporary state of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from localserve.cli import cli
from localserve.ollama.layers import MEDIA_CONFIG
from localserve.ollama.store import Layer, ModelStore
from localserve.paths import home, state_dir


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(cli, list(args))
    return r.exit_code, r.stdout, r.stderr


@pytest.fixture
def store(tmp_path) -> ModelStore:
    """An Ollama store with two versions of `demo`. Promote copies manifests only, so the
    manifests are all a version needs here; they differ, as two exports would."""
    s = ModelStore(tmp_path / "models")
    for tag, byte in (("v1", "1"), ("v2", "2")):
        s.write_manifest(f"demo:{tag}", Layer(MEDIA_CONFIG, "sha256:" + byte * 64, 2), [])
    return s


def promote(store: ModelStore, version: str) -> str:
    code, _, err = run("promote", version, "--as", "demo:latest", "--store", str(store.root))
    assert code == 0, err
    return err


# --- where the state directory is ----------------------------------------------------------------

def test_the_state_dir_variable_wins_over_xdg(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSERVE_STATE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "mine"


def test_without_the_variable_the_state_dir_follows_xdg_state_home(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCALSERVE_STATE_DIR")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert state_dir() == tmp_path / "xdg" / "localserve"


@pytest.mark.parametrize("xdg", [None, "", "relative/state"], ids=["unset", "empty", "relative"])
def test_otherwise_the_state_dir_is_under_the_home_folder(xdg, monkeypatch):
    monkeypatch.delenv("LOCALSERVE_STATE_DIR")
    if xdg is None:
        monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_STATE_HOME", xdg)  # a relative value is invalid by the XDG rules
    assert state_dir() == Path.home() / ".local" / "state" / "localserve"


def test_state_and_cache_are_set_independently(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSERVE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LOCALSERVE_STATE_DIR", str(tmp_path / "state"))
    assert home() == tmp_path / "cache" and state_dir() == tmp_path / "state"


# --- the promote history is state --------------------------------------------------------------

def _events(alias: str = "demo:latest") -> list[dict]:
    from localserve.lifecycle.store import VersionStore

    with VersionStore() as history:
        return history.events(alias=alias)


def test_the_history_is_written_to_the_state_dir_and_never_to_the_cache(store, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSERVE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LOCALSERVE_STATE_DIR", str(tmp_path / "state"))
    promote(store, "demo:v1")
    promote(store, "demo:v2")
    assert (tmp_path / "state" / "localserve.db").is_file()
    assert [e["version"] for e in _events()] == ["demo:v1", "demo:v2"]
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").rglob("*"))


def _legacy_history(path: Path, store: ModelStore) -> None:
    """What an earlier release wrote: demo:latest promoted to v1, then to v2."""
    key = f"store:{store.root.resolve()}|demo:latest"
    events = [{"action": "promote", "version": v, "digest": store.manifest_digest(v), "at": f"2026-11-0{i}T00:00:00",
               "rolled_back_at": None, "note": None} for i, v in enumerate(("demo:v1", "demo:v2"), 1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"schema": 1, "aliases": {key: {"events": events}}}))
    store.copy("demo:v2", "demo:latest")


@pytest.mark.parametrize("legacy_place", ["LOCALSERVE_HOME", "~/.config", "state dir"])
def test_a_history_left_by_an_earlier_release_is_imported_once_and_kept(legacy_place, store, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSERVE_STATE_DIR", str(tmp_path / "state"))
    if legacy_place == "LOCALSERVE_HOME":
        monkeypatch.setenv("LOCALSERVE_HOME", str(tmp_path / "cache"))
        legacy = tmp_path / "cache" / "history.json"
    elif legacy_place == "~/.config":
        monkeypatch.delenv("LOCALSERVE_HOME", raising=False)
        legacy = Path.home() / ".config" / "localserve" / "history.json"
    else:
        legacy = tmp_path / "state" / "history.json"
    _legacy_history(legacy, store)
    before = legacy.read_bytes()
    # the rollback can only find v1 through the imported history
    code, out, err = run("rollback", "demo", "--store", str(store.root))
    assert code == 0 and "demo:latest -> demo:v1" in out, err
    assert store.manifest_digest("demo:latest") == store.manifest_digest("demo:v1")
    assert sum("imported 2 promote/rollback events" in line for line in err.splitlines()) == 1
    assert [e["action"] for e in _events()] == ["promote", "promote", "rollback"]
    assert legacy.read_bytes() == before  # read, never written
    # imported once: the next command neither imports nor says so again
    err = promote(store, "demo:v2")
    assert "imported" not in err and len(_events()) == 4


def test_each_test_writes_its_history_into_a_fresh_temporary_state(store, tmp_path_factory):
    temp = tmp_path_factory.getbasetemp()
    assert state_dir().is_relative_to(temp) and Path.home().is_relative_to(temp)
    assert ModelStore().root.is_relative_to(temp)  # Ollama's default model folder too
    db = state_dir() / "localserve.db"
    assert not db.exists()
    promote(store, "demo:v1")
    assert db.is_file() and db.is_relative_to(temp)


def test_the_cache_is_shared_with_the_real_one_not_made_temporary(tmp_path_factory):
    # builds and downloads must be reused, not repeated in every test's temporary home
    assert not home().is_relative_to(tmp_path_factory.getbasetemp())
