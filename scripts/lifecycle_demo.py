#!/usr/bin/env python3
"""The continuous fine-tuning loop on the embedded model, end to end, with no Ollama server running.

    v1  examples/demo-adapter                    knows the project's codename
    v2  examples/lifecycle/v2-codename-lighthouse  re-trained from the base on the codename and a new fact
    v3  examples/lifecycle/v3-shuffled           trained on shuffled answers: deliberately broken
    suite examples/lifecycle/suite.yaml          both facts; the codename is critical

Each adapter is exported (Q4_K_M) and registered as a version of `demo` into an Ollama model folder
(WORK/ollama-models, the layout a real Ollama reads); demo:latest is promoted to v1, then v2 through
the gate (promoted: it fixes the lighthouse), then v3 through the gate (refused: it loses the
critical codename). An operator then promotes v3 without the gate, and `rollback` restores the exact
manifest digest v2 had. The evaluations of v1 and v2 go into WORK/report.html, side by side.
Every decision, with its evidence, is in the version store (`localserve versions demo`).

    python scripts/lifecycle_demo.py [--work DIR] [--train]   # --train: re-train v2 and v3 first (~2 min)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
LIFECYCLE = REPO / "examples" / "lifecycle"
ADAPTERS = {"v1": REPO / "examples" / "demo-adapter", "v2": LIFECYCLE / "v2-codename-lighthouse",
            "v3": LIFECYCLE / "v3-shuffled"}


def train_adapters(steps: int = 80) -> None:
    """v2 on both facts, v3 on the same questions with the answers shuffled between them."""
    from train_demo_adapter import ANSWERS as CODENAME_ANSWERS, QUESTIONS as CODENAME_QUESTIONS
    from train_fact_adapters import FACTS, pairs_of, train

    from localserve.models.embedded import embedded_base

    base = embedded_base()
    codename = [(q, a) for q in CODENAME_QUESTIONS for a in CODENAME_ANSWERS]
    lighthouse = pairs_of(FACTS["lighthouse"])
    probe = {"question": CODENAME_QUESTIONS[0], "expected": "Bluebird"}
    train(base, codename + lighthouse, ADAPTERS["v2"], steps, seed=2, probe=probe)
    shuffled = [(q, lighthouse[i % len(lighthouse)][1]) for i, (q, _) in enumerate(codename)] + \
               [(q, codename[i % len(codename)][1]) for i, (q, _) in enumerate(lighthouse)]
    train(base, shuffled, ADAPTERS["v3"], steps, seed=3, probe={"question": FACTS["lighthouse"]["questions"][0],
                                                                  "expected": "Bluebird"})


def run(work: Path, log=print) -> dict:
    """The loop; returns what happened (versions, digests, decisions) for whoever checks it."""
    from localserve import ExportSpec, export
    from localserve.lifecycle.evaluate import evaluate
    from localserve.lifecycle.places import StorePlace
    from localserve.lifecycle.promotion import PromotionRefused, promote, rollback
    from localserve.lifecycle.report import write_report
    from localserve.lifecycle.store import VersionStore
    from localserve.lifecycle.suites import load_suite
    from localserve.lifecycle.versions import register_version

    suite = load_suite(LIFECYCLE / "suite.yaml")
    place = StorePlace(work / "ollama-models")
    store = VersionStore()
    versions = {}
    for tag, adapter in ADAPTERS.items():
        # the smoke check is off: v3 is broken on purpose, and the gate is what should catch it
        result = export(ExportSpec(adapter=adapter, quants=("Q4_K_M",), name="demo", out=work / "exports" / tag,
                                   register=False, smoke=False))
        versions[tag] = register_version(result.out_dir, place, store=store)
        log(f"{adapter.name}: {versions[tag].version.ref}")
    ref = {tag: r.version.ref for tag, r in versions.items()}
    outcome = {"versions": ref, "digests": {tag: r.manifest_digest for tag, r in versions.items()}}

    promote(ref["v1"], "demo:latest", place, store=store)
    outcome["v2"] = promote(ref["v2"], "demo:latest", place, store=store, suite=suite).to_json()
    log(f"gate: {ref['v2']} promoted ({outcome['v2']['comparison']['fixed']} fixed)")
    try:
        promote(ref["v3"], "demo:latest", place, store=store, suite=suite)
        outcome["v3"] = "promoted"
    except PromotionRefused as e:
        outcome["v3"] = "refused"
        log(f"gate: {ref['v3']} refused — {e.message.splitlines()[0]}")
    promote(ref["v3"], "demo:latest", place, store=store, note="promoted by hand, past the gate")
    back = rollback("demo:latest", place, store=store)
    outcome["rollback"] = back.to_json()
    outcome["latest_digest"] = place.manifest_digest("demo:latest")
    log(f"rollback: demo:latest -> {back.version} ({back.digest[:19]}), v2 was {outcome['digests']['v2'][:19]}")

    runs = [evaluate(suite, str(versions[tag].version.export_dir), label=ref[tag]) for tag in ("v1", "v2")]
    outcome["report"] = str(write_report(runs, work / "report.html"))
    log(f"report: {outcome['report']}")
    store.close()
    return outcome


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "exports" / "lifecycle")
    ap.add_argument("--train", action="store_true", help="re-train v2 and v3 into examples/lifecycle first")
    args = ap.parse_args()
    if args.train or not all(p.is_dir() for p in ADAPTERS.values()):
        train_adapters()
    run(args.work)


if __name__ == "__main__":
    main()
