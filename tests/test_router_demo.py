"""The README's A/B loop on the embedded model (scripts/router_demo.py), against the Ollama stand-in: v2 live,
v3 (trained on shuffled answers) on 10% of the users, graded traffic with feedback; the verdict rolls v3
back with its evidence on the version, and v2's answers after the verdict have not drifted from before."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest_plugins = ["ollama_standin.fixtures"]

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_ab_loop_rolls_back_the_worse_candidate_and_v2_does_not_drift(steer, tmp_path, embedded_base):
    sys.path.insert(0, str(REPO / "scripts"))
    from router_demo import run

    from localserve.lifecycle.store import VersionStore

    outcome = run(tmp_path, steer.url, requests=80, users=40)
    refs = outcome["versions"]
    assert outcome["verdict"]["action"] == "rollback" and outcome["verdict"]["candidate_version"] == refs["v3"]
    assert outcome["weights"] == {refs["v2"]: 90.0, refs["v3"]: 0.0}
    good = {arm: sum(p) / len(p) for arm, p in outcome["round1"].items()}
    assert good[refs["v2"]] > good[refs["v3"]]
    assert set(outcome["round2"]) == {refs["v2"]}
    # the same model asked the same questions answers alike (latency is left out: it follows the machine's load)
    assert not [c for c in outcome["drift"]["checks"] if c["flagged"] and c["metric"] != "latency_s"]
    with VersionStore() as store:
        (event,) = [e for e in store.events(version=refs["v3"]) if e["action"] == "ab-rollback"]
    assert event["payload"]["ab"]["clauses"][0]["holds"] is False
    for chart in ("ab_chart", "drift_chart"):
        assert Path(outcome[chart]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
