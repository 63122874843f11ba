"""User state lives apart from the cache: where the state directory is, that the promote history is
written there (never into the cache), that a history an earlier release left behind is carried over
once without touching it, and that every test runs on a temporary state of its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from localserve.cli import cli
from localserve.ollama.history import history_path
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

def test_the_history_is_written_to_the_state_dir_and_never_to_the_cache(store, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setenv("LOCALSERVE_HOME", str(cache))
    monkeypatch.setenv("LOCALSERVE_STATE_DIR", str(tmp_path / "state"))
    promote(store, "demo:v1")
    promote(store, "demo:v2")

    assert history_path() == tmp_path / "state" / "history.json"
    history = json.loads(history_path().read_text())
    (events,) = [a["events"] for a in history["aliases"].values()]
    assert [e["version"] for e in events] == ["demo:v1", "demo:v2"]
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("legacy_place", ["LOCALSERVE_HOME", "~/.config"])
def test_a_history_left_by_an_earlier_release_is_copied_once_and_kept(legacy_place, store, tmp_path, monkeypatch):
    if legacy_place == "LOCALSERVE_HOME":
        monkeypatch.setenv("LOCALSERVE_HOME", str(tmp_path / "cache"))
        legacy_dir = tmp_path / "cache"
    else:
        monkeypatch.delenv("LOCALSERVE_HOME")
        legacy_dir = Path.home() / ".config" / "localserve"
    # the earlier release's history: demo:latest promoted to v1, then to v2
    monkeypatch.setenv("LOCALSERVE_STATE_DIR", str(legacy_dir))
    promote(store, "demo:v1")
    promote(store, "demo:v2")
    legacy = legacy_dir / "history.json"
    legacy_bytes, legacy_mtime = legacy.read_bytes(), legacy.stat().st_mtime_ns

    monkeypatch.setenv("LOCALSERVE_STATE_DIR", str(tmp_path / "state"))
    code, out, err = run("rollback", "demo", "--store", str(store.root))
    # the rollback could only find v1 through the carried-over history
    assert code == 0, err
    assert store.manifest_digest("demo:latest") == store.manifest_digest("demo:v1")
    moved = [line for line in err.splitlines() if "moved the promote history" in line]
    assert len(moved) == 1 and str(legacy) in moved[0] and str(history_path()) in moved[0]

    events = json.loads(history_path().read_text())["aliases"]
    (events,) = [a["events"] for a in events.values()]
    assert [e["action"] for e in events] == ["promote", "promote", "rollback"]
    assert legacy.read_bytes() == legacy_bytes and legacy.stat().st_mtime_ns == legacy_mtime

    # from now on the state directory's history is the one: no second copy, no second message
    err = promote(store, "demo:v2")
    assert "moved the promote history" not in err
    assert len(json.loads(history_path().read_text())["aliases"][f"store:{store.root.resolve()}|demo:latest"]
               ["events"]) == 4
    assert legacy.read_bytes() == legacy_bytes


def test_an_existing_state_history_is_never_overwritten_by_a_legacy_one(store, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALSERVE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("LOCALSERVE_STATE_DIR", str(tmp_path / "cache"))
    promote(store, "demo:v1")  # a legacy history with one promotion
    monkeypatch.setenv("LOCALSERVE_STATE_DIR", str(tmp_path / "state"))
    promote(store, "demo:v2")  # migrates it, then appends
    (tmp_path / "cache" / "history.json").write_text("not json")  # the old file changes later on
    err = promote(store, "demo:v1")
    assert "moved the promote history" not in err
    (entry,) = json.loads(history_path().read_text())["aliases"].values()
    assert [e["version"] for e in entry["events"]] == ["demo:v1", "demo:v2", "demo:v1"]


# --- every test has its own state ------------------------------------------------------------------

def test_each_test_writes_its_history_into_a_fresh_temporary_state(store, tmp_path_factory):
    temp = tmp_path_factory.getbasetemp()
    assert state_dir().is_relative_to(temp) and Path.home().is_relative_to(temp)
    assert ModelStore().root.is_relative_to(temp)  # Ollama's default model folder too
    assert not history_path().exists()
    promote(store, "demo:v1")
    assert history_path().is_file() and history_path().is_relative_to(temp)


def test_the_cache_is_shared_with_the_real_one_not_made_temporary(tmp_path_factory):
    # builds and downloads must be reused, not repeated in every test's temporary home
    assert not home().is_relative_to(tmp_path_factory.getbasetemp())
