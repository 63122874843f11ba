"""The continuous loop on the embedded model (scripts/continuous_demo.py) against the Ollama stand-in: v1 live with
capture, users' wrong answers corrected, harvested, retrained from the base into v2, which the gate passes (it
gains the lighthouse, keeps the critical codename) and the A/B verdict promotes; a bad dataset's v3 is refused
by the gate, and once forced into the A/B, rolled back by its users' feedback."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from localserve.fsutil import sha256_file

pytest_plugins = ["ollama_standin.fixtures"]

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_loop_learns_from_corrections_and_refuses_then_rolls_back_a_bad_dataset(steer, tmp_path, embedded_base):
    sys.path.insert(0, str(REPO / "scripts"))
    from continuous_demo import LOOP, run

    from localserve.lifecycle.store import VersionStore

    outcome = run(tmp_path, steer.url)
    v1, v2, v3 = "demo:v1", "demo:v2", outcome["v3"]
    assert outcome["versions"] == [v1, v2, "demo:v3"] and v3 == "demo:v3"
    # v1 knows the codename and not the lighthouse: half its answers were wrong, and corrected
    (answers,) = outcome["round1"].values()
    assert 0 < sum(answers) < len(answers)
    assert outcome["harvested"] == 4  # one example per lighthouse question, however often it was asked

    gate = outcome["v2"]["gate"]
    assert gate["fixed"] and not gate["broken"] and gate["decision"]["promote"]
    assert outcome["v2"]["ab"] == {v1: 90.0, v2: 10.0}
    assert outcome["verdict_v2"]["action"] == "promote"
    assert all(outcome["round2"][v2])  # every answer of v2 held its fact

    assert outcome["v3_gate"] == "refused"
    assert outcome["verdict_v3"]["action"] == "rollback"
    assert outcome["weights"] == {v2: 90.0, v3: 0.0} and outcome["latest"] == v2

    with VersionStore() as store:
        trained = store.version(v2).training["finetune"]
        assert [d["sha256"] for d in trained["datasets"]] == [sha256_file(LOOP / "codename.jsonl"),
                                                               sha256_file(tmp_path / "harvest.jsonl")]
        assert store.version(v2).parent == v1 and store.version(v3).parent == v2
        actions = [e["action"] for e in store.events(version=v2)]
        assert actions[:5] == ["retrain:finetune", "retrain:export", "retrain:register", "retrain:gate", "retrain:ab"]
        assert "promote" in actions
        refused = [e for e in store.events(version=v3) if e["action"] == "retrain:gate"]
        assert refused[0]["payload"]["critical_broken"] and not refused[0]["payload"]["decision"]["promote"]
        assert [e["action"] for e in store.events(version=v3)][-1] == "ab-rollback"
