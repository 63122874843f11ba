"""Versions, the version store and the gate: every registered export is an immutable NAME:vN with its
lineage; the same export is the same version; promotions are recorded with their evidence; a rollback
restores the exact manifest digest live before, even after a version's tag was re-created."""

from __future__ import annotations

import json
import sqlite3

import pytest

from localserve import ExportSpec, export
from localserve.errors import InputError, OllamaError, UnknownName
from localserve.lifecycle.gate import compare, decide, mcnemar_exact
from localserve.lifecycle.places import StorePlace
from localserve.lifecycle.promotion import promote, rollback
from localserve.lifecycle.results import Answer, AssertionResult, CaseResult, EvalRun
from localserve.lifecycle.store import MIGRATIONS, VersionStore
from localserve.lifecycle.versions import check_not_stacked, register_version
from localserve.lineage import read_record


@pytest.fixture(scope="module")
def second_export(tiny_adapter, tmp_path_factory):
    """Another export under the same name (other artifacts): the next version."""
    out = tmp_path_factory.mktemp("tiny-b") / "tiny"
    export(ExportSpec(adapter=tiny_adapter, quants=("Q8_0",), name="tiny", out=out, smoke=False, register=False))
    return out


# --- the store -------------------------------------------------------------------------------------

def test_versions_are_numbered_per_name_and_the_same_export_is_the_same_version(tiny_export, second_export, tmp_path):
    with VersionStore(tmp_path / "v.db") as store:
        place = StorePlace(tmp_path / "models")
        first = register_version(tiny_export, place, store=store)
        again = register_version(tiny_export, place, store=store)
        second = register_version(second_export, place, store=store)
        assert (first.version.ref, first.new) == ("tiny:v1", True)
        assert (again.version.ref, again.new) == ("tiny:v1", False)
        assert second.version.ref == "tiny:v2" and second.version.parent == "tiny:v1"
        assert first.models == ("tiny:v1", "tiny:q4_k_m") and second.models == ("tiny:v2", "tiny:q8_0")
        assert place.manifest_digest("tiny:v1") == first.manifest_digest == place.manifest_digest("tiny:q4_k_m")
        v1 = store.version("tiny:v1")
        record = read_record(tiny_export)
        assert v1.record.artifacts == record.artifacts  # every artifact's sha256
        assert v1.record.adapter.sha256 == record.adapter.sha256 and v1.record.base.sha256 == record.base.sha256
        assert v1.training["lora"]["r"] == 8 and v1.record.spec["quants"] == ["Q4_K_M", "Q8_0"]
        (reg,) = store.registrations(v1)
        assert reg.manifest_digest == first.manifest_digest and reg.manifest is not None
        assert read_record(tiny_export).registered["version"] == "tiny:v1"
        with pytest.raises(UnknownName, match="tiny:v1, tiny:v2"):
            store.version("tiny:v9")


def test_a_version_tag_someone_else_made_is_not_overwritten(tiny_export, second_export, tmp_path):
    place = StorePlace(tmp_path / "models")
    with VersionStore(tmp_path / "theirs.db") as theirs:  # another store made tiny:v1 on the same place
        register_version(second_export, place, store=theirs)
    with VersionStore(tmp_path / "mine.db") as mine:
        with pytest.raises(OllamaError, match="tiny:v1 already exists .* versions are immutable"):
            register_version(tiny_export, place, store=mine)


def test_migrations_set_the_schema_version_and_a_newer_store_is_refused(tmp_path):
    VersionStore(tmp_path / "v.db").close()
    db = sqlite3.connect(tmp_path / "v.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(InputError, match="newer than this localserve"):
        VersionStore(tmp_path / "v.db")


def test_a_damaged_store_is_one_line(tmp_path):
    (tmp_path / "v.db").write_text("not sqlite")
    with pytest.raises(InputError, match="cannot be opened"):
        VersionStore(tmp_path / "v.db")


# --- exact rollback ----------------------------------------------------------------------------------

def test_rollback_restores_the_exact_digest_after_the_version_tag_was_recreated(tiny_export, second_export, tmp_path):
    with VersionStore(tmp_path / "v.db") as store:
        place = StorePlace(tmp_path / "models")
        v1 = register_version(tiny_export, place, store=store)
        v2 = register_version(second_export, place, store=store)
        promote("tiny:v1", "tiny:latest", place, store=store)
        promote("tiny:v2", "tiny:latest", place, store=store, note="more bits")
        place.copy("tiny:v2", "tiny:v1")  # someone re-created tiny:v1 with other content
        assert place.manifest_digest("tiny:v1") == v2.manifest_digest
        result = rollback("tiny:latest", place, store=store)
        assert result.version == "tiny:v1" and result.digest == v1.manifest_digest
        assert place.manifest_digest("tiny:latest") == v1.manifest_digest  # not the re-created tag's content
        actions = [(e["action"], e["version"]) for e in store.events(alias="tiny:latest")]
        assert actions == [("promote", "tiny:v1"), ("promote", "tiny:v2"), ("rollback", "tiny:v1")]


def test_rollback_says_which_blobs_are_gone(tiny_export, second_export, tmp_path):
    with VersionStore(tmp_path / "v.db") as store:
        place = StorePlace(tmp_path / "models")
        register_version(tiny_export, place, store=store)
        register_version(second_export, place, store=store)
        promote("tiny:v1", "tiny:latest", place, store=store)
        promote("tiny:v2", "tiny:latest", place, store=store)
        for name in ("tiny:v1", "tiny:q4_k_m"):
            place.store.delete(name)  # v1's GGUF blob goes with its last manifest
        with pytest.raises(OllamaError, match=r"blobs sha256:[0-9a-f]{64}.* are gone"):
            rollback("tiny:latest", place, store=store)


# --- the gate ----------------------------------------------------------------------------------------

def _run(target: str, outcomes: dict[str, bool], critical: tuple[str, ...] = ()) -> EvalRun:
    cases = tuple(CaseResult(cid, Answer("x", 0.1), (AssertionResult("contains", ok, float(ok), "r"),),
                             cid in critical) for cid, ok in outcomes.items())
    return EvalRun("suite.yaml", "0" * 64, target, {}, cases, "2026-12-01T00:00:00+00:00")


def test_mcnemar_is_the_exact_binomial_of_the_flips():
    # 7 fixed, 1 broken: p = 2 * P(X <= 1 | n=8, 1/2) = 2 * (1 + 8) / 256
    assert mcnemar_exact(7, 1) == pytest.approx(18 / 256)
    assert mcnemar_exact(1, 7) == pytest.approx(18 / 256) and mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 0) == pytest.approx(2 / 1024)


def test_the_gate_promotes_a_better_candidate_and_reports_the_flips():
    champion = _run("v1", {"a": True, "b": False, "c": False, "d": True})
    candidate = _run("v2", {"a": True, "b": True, "c": True, "d": True})
    c = compare(candidate, champion)
    assert c.fixed == ("b", "c") and c.broken == () and c.delta == pytest.approx(0.5)
    assert decide(c).promote
    significant = decide(c, require_significant=True)  # two flips cannot reach p < 0.05
    assert not significant.promote and "not significant: McNemar p = 0.5" in significant.reasons[0]


def test_the_gate_refuses_a_lower_score_and_a_critical_regression():
    champion = _run("v1", {"a": True, "b": True, "c": False}, critical=("a",))
    worse = compare(_run("v2", {"a": True, "b": False, "c": False}, critical=("a",)), champion)
    assert "is not at least the champion's" in decide(worse).reasons[0]
    critical = compare(_run("v3", {"a": False, "b": True, "c": True}, critical=("a",)), champion)
    assert critical.delta == 0 and decide(critical).reasons == (
        "critical case(s) the champion passes fail: a",)
    assert not decide(compare(_run("v4", {"a": True, "b": True, "c": True}), champion), min_delta=0.5).promote


def test_without_a_champion_the_candidate_is_promoted():
    c = compare(_run("v1", {"a": False}), None)
    assert decide(c, min_delta=0.9).promote and c.p_value == 1.0


# --- always from the base --------------------------------------------------------------------------

def test_an_adapter_on_an_export_or_a_merge_is_refused_unless_allowed(tiny_adapter, tiny_base, tmp_path):
    import shutil

    from localserve.errors import AdapterError

    stacked = tmp_path / "base"
    shutil.copytree(tiny_base, stacked)
    check_not_stacked(stacked, tiny_adapter)  # a plain base is fine
    (stacked / "localserve.json").write_text(json.dumps({"kind": "merge", "name": "m"}))
    with pytest.raises(AdapterError, match="itself a localserve export or merge.*--allow-stacked"):
        export(ExportSpec(adapter=tiny_adapter, base=stacked, out=tmp_path / "o", smoke=False, register=False))
    assert not (tmp_path / "o").exists()
    result = export(ExportSpec(adapter=tiny_adapter, base=stacked, out=tmp_path / "o", smoke=False, register=False,
                               allow_stacked=True))
    assert result.record.spec["allow_stacked"] is True
