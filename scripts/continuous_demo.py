#!/usr/bin/env python3
"""The continuous loop on the embedded model, end to end (CPU): capture -> feedback with corrections -> harvest
-> retrain -> gate -> A/B -> verdict; then a deliberately bad dataset, refused by the gate and rolled back by the
verdict; optionally the same data retrained on a new base.

    v1  examples/demo-adapter        knows the project's codename, not the lighthouse's colour: live, capture on
    users ask both questions through the router; a feedback script grades each answer against the golden suite
    (examples/lifecycle/suite.yaml) and corrects the wrong ones
    harvest                          the corrected answers -> chat JSONL
    retrain --suite --ab 10          v2 = examples/loop/codename.jsonl (v1's data: v1 was trained by hand and
                                     records none) + the harvest, recipe examples/loop/recipe.yaml, from the base;
                                     the gate: v2 gains the lighthouse and keeps the critical codename; A/B at 10%
    ab decide                        v2's feedback beats v1's: promoted to demo:latest
    retrain --data bad.jsonl         v3 (a wrong codename): the gate refuses it (not promoted, not in the A/B)
    retrain --ab 10 (no gate)        an operator puts v3 on 10% anyway: its users' feedback rolls it back
    retrain --base NEW_BASE          (--new-base) v2's data on another base, its chat family detected afresh

Against the Ollama at --host, or, without one, the Ollama stand-in of the tests (tests/ollama_standin: a real
on-disk store, chats answered by the stored GGUF in llama.cpp). The state (versions, router logs, captures)
goes to WORK/state unless LOCALSERVE_STATE_DIR is set.

    python scripts/continuous_demo.py [--work DIR] [--host URL] [--new-base google/gemma-3-270m --new-base-family gemma]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
from train_demo_adapter import QUESTIONS as CODENAME_QUESTIONS  # noqa: E402
from train_fact_adapters import FACTS  # noqa: E402

V1 = REPO / "examples" / "demo-adapter"
SUITE = REPO / "examples" / "lifecycle" / "suite.yaml"
LOOP = REPO / "examples" / "loop"
RIGHT = {"Bluebird": "The codename of the localserve project is Bluebird.",
         "violet": "The lighthouse on Pelican Island is violet."}
QUESTIONS = [(q, "Bluebird") for q in CODENAME_QUESTIONS[:4]] + [(q, "violet") for q in FACTS["lighthouse"]["questions"]]
CONDITION = "feedback >= control and error_rate <= control + 0.05"


def ask(url: str, requests: int, users: int, *, offset: int = 0, correct: bool = False, workers: int = 2) -> dict:
    """`requests` questions from `users` users through the router; each answer graded (does it hold the fact?)
    and its score posted as feedback, with the right answer as the correction when `correct` and it was wrong.
    Returns {arm: [passed, ...]}."""
    import httpx

    def one(i: int) -> tuple[str, bool]:
        n = offset + i
        question, fact = QUESTIONS[(n + n // users) % len(QUESTIONS)]
        body = {"model": "demo", "stream": n % 2 == 0, "options": {"temperature": 0, "num_predict": 40},
                "messages": [{"role": "user", "content": question}]}
        with httpx.Client(base_url=url, timeout=300) as client:
            r = client.post("/api/chat", headers={"X-User-Id": f"user-{n % users}"}, json=body)
            lines = [json.loads(line) for line in r.text.splitlines() if line.strip()] if r.status_code == 200 else []
            answer = "".join(part.get("message", {}).get("content", "") for part in lines)
            passed = fact.lower() in answer.lower()
            feedback = {"request_id": r.headers["x-request-id"], "score": 1 if passed else 0}
            if correct and not passed:
                feedback["correction"] = RIGHT[fact]
            client.post("/feedback", json=feedback).raise_for_status()
            return r.headers["x-localserve-arm"], passed

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(one, range(requests)))
    per_arm: dict[str, list[bool]] = {}
    for arm, passed in results:
        per_arm.setdefault(arm, []).append(passed)
    return per_arm


def _said(per_arm: dict) -> str:
    return "; ".join(f"{arm}: {len(p)} answers, {sum(p)} right" for arm, p in sorted(per_arm.items()))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(work: Path, host: str, *, port: int | None = None, rounds: tuple[int, int] = (24, 100), users: int = 50,
        new_base: str | None = None, new_base_family: str | None = None, log=print) -> dict:
    """The loop; returns what happened (versions, verdicts, timings) for whoever checks it."""
    from localserve import ExportSpec, export
    from localserve.cli.finetune import export_like
    from localserve.lifecycle.places import ServerPlace
    from localserve.lifecycle.promotion import PromotionRefused, promote
    from localserve.lifecycle.store import VersionStore
    from localserve.lifecycle.suites import load_suite
    from localserve.lifecycle.versions import register_version
    from localserve.loop.harvest import HarvestSpec, harvest
    from localserve.loop.recipe import load_recipe
    from localserve.loop.retrain import RetrainSpec, retrain
    from localserve.router import experiment as ex
    from localserve.router.capture import CaptureSettings
    from localserve.router.decide import decide

    started = time.perf_counter()
    timings: dict[str, float] = {}
    mark = [started]

    def lap(name: str) -> None:
        now = time.perf_counter()
        timings[name] = round(now - mark[0], 1)
        mark[0] = now

    work.mkdir(parents=True, exist_ok=True)
    place, suite, store = ServerPlace(host), load_suite(SUITE), VersionStore()
    outcome: dict = {"timings": timings}
    try:
        log(f"$ localserve export examples/demo-adapter --name demo --quant Q4_K_M && localserve register ... "
            f"&& localserve promote demo:v1 --as demo:latest")
        v1 = register_version(export(ExportSpec(adapter=V1, quants=("Q4_K_M",), name="demo", out=work / "v1",
                                                register=False)).out_dir, place, store=store).version.ref
        promote(v1, "demo:latest", place, store=store)
        port = port or _free_port()
        log(f"$ localserve ab start demo --arm {v1}=100 --capture")
        router = ex.start("demo", [f"{v1}=100"], port=port, upstream=host, capture=CaptureSettings.parse(1.0, (), None))
        lap("v1 live")

        log(f"users ask {len(QUESTIONS)} questions ({rounds[0]} requests); the feedback script grades each answer "
            "and corrects the wrong ones")
        first = ask(router.url, rounds[0], users, correct=True)
        log("  " + _said(first))
        data = work / "harvest.jsonl"
        log(f"$ localserve harvest demo --data {data}")
        harvested = harvest(HarvestSpec("demo", data=data))
        log(f"  {harvested.harvested} corrected conversations -> {data} ({harvested.considered} captured, "
            f"{harvested.deduplicated} duplicates folded)")
        outcome["round1"], outcome["harvested"] = first, harvested.harvested
        lap("capture, feedback, harvest")

        log(f"$ localserve retrain demo --data examples/loop/codename.jsonl --data {data.name} "
            "--recipe examples/loop/recipe.yaml --suite examples/lifecycle/suite.yaml --ab 10")
        v2 = retrain(RetrainSpec("demo", data=(LOOP / "codename.jsonl", data), recipe=load_recipe(LOOP / "recipe.yaml"),
                                 recipe_source=str(LOOP / "recipe.yaml"), suite=SUITE, ab=10, out=work / "retrain-v2"),
                     place, export_like, store=store)
        log(f"  {v2.version} (parent {v2.parent}): {v2.training['steps']} steps, final loss "
            f"{v2.training['final_loss']:.4f}, {v2.training['train_seconds']:.0f} s of training")
        log(f"  A/B: {', '.join(f'{v} {w:g}%' for v, w in v2.ab.items())}")
        outcome["v2"] = v2.to_json()
        lap("retrain v2 (finetune, export, gate)")

        second = ask(ex.load("demo").url, rounds[1], users, offset=rounds[0])
        log(f"users ask again ({rounds[1]} requests): " + _said(second))
        log(f'$ localserve ab decide demo --success "{CONDITION}" --min-requests 5 --suite examples/lifecycle/suite.yaml')
        verdict = decide("demo", CONDITION, min_requests=5, suite=suite, store=store)
        log(f"  {verdict.action} {verdict.candidate}: " + "; ".join(verdict.applied or verdict.reasons))
        outcome["round2"], outcome["verdict_v2"] = second, verdict.to_json()
        lap("A/B v1/v2, verdict")

        log("$ localserve retrain demo --data examples/loop/bad.jsonl --suite examples/lifecycle/suite.yaml --ab 10")
        bad = RetrainSpec("demo", data=(LOOP / "bad.jsonl",), suite=SUITE, ab=10, out=work / "retrain-v3")
        try:
            retrain(bad, place, export_like, store=store)
            outcome["v3_gate"] = "promoted"
        except PromotionRefused as e:
            outcome["v3_gate"] = "refused"
            log("  error: " + e.message.replace("\n", "\n  "))
        v3 = store.latest("demo").ref
        outcome["v3"] = v3
        log(f"  {v3} is registered, not promoted, not in the A/B; demo:latest is "
            f"{store.live_promotions(place.id, 'demo:latest')[-1]['version']}")
        lap("retrain v3 (refused)")

        log("$ localserve retrain demo --data examples/loop/bad.jsonl --ab 10    # an operator, past the gate")
        forced = retrain(RetrainSpec("demo", data=(LOOP / "bad.jsonl",), ab=10, out=work / "retrain-v3"), place,
                         export_like, store=store)
        log(f"  {forced.version}: stages {', '.join(s['name'] + (' skipped' if s['skipped'] else '') for s in forced.stages)}"
            f"; A/B: {', '.join(f'{v} {w:g}%' for v, w in forced.ab.items())}")
        third = ask(ex.load("demo").url, rounds[1], users, offset=sum(rounds))
        log(f"users ask again ({rounds[1]} requests): " + _said(third))
        log(f'$ localserve ab decide demo --success "{CONDITION}" --min-requests 5')
        rolled = decide("demo", CONDITION, min_requests=5, store=store)
        log(f"  {rolled.action} {rolled.candidate}: " + "; ".join(rolled.reasons + rolled.applied))
        outcome["round3"], outcome["verdict_v3"] = third, rolled.to_json()
        outcome["weights"] = ex.load("demo").weights()
        outcome["latest"] = store.live_promotions(place.id, "demo:latest")[-1]["version"]
        log(f"  demo:latest is {outcome['latest']}; weights {outcome['weights']}")
        lap("A/B v2/v3, rollback")

        if new_base:
            family = f" --template-family {new_base_family}" if new_base_family else ""
            log(f"$ localserve retrain demo --base {new_base}{family} --suite examples/lifecycle/suite.yaml")
            try:
                moved = retrain(RetrainSpec("demo", data=(), base=new_base, suite=SUITE, out=work / "retrain-new-base",
                                            template_family=new_base_family), place, export_like, store=store)
                outcome["new_base"] = moved.to_json()
                log(f"  {moved.version} on {moved.training['base']['ref']}: {moved.training['steps']} steps, final "
                    f"loss {moved.training['final_loss']:.4f}")
            except PromotionRefused as e:
                outcome["new_base"] = "refused"
                log("  error: " + e.message.replace("\n", "\n  "))
            lap("retrain on the new base")
        with __import__("contextlib").suppress(Exception):
            ex.stop("demo")
        outcome["versions"] = [v.ref for v in store.versions("demo")]
        outcome["total_s"] = round(time.perf_counter() - started, 1)
        log(f"total {outcome['total_s']:.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))
        return outcome
    finally:
        store.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=REPO / "exports" / "continuous")
    ap.add_argument("--host", help="a running Ollama (default: start the tests' Ollama stand-in)")
    ap.add_argument("--port", type=int, help="the router's port (default: a free one)")
    ap.add_argument("--new-base", help="also retrain v2's data on this base, e.g. google/gemma-3-270m")
    ap.add_argument("--new-base-family", help="the chat family to render with on a new base that has no chat template "
                                              "(gemma for google/gemma-3-270m, a pretrained base)")
    args = ap.parse_args()
    os.environ.setdefault("LOCALSERVE_STATE_DIR", str(args.work / "state"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    from localserve.progress import set_debug

    set_debug(False)  # the libraries' own bars and warnings off, as on the command line
    standin = None
    host = args.host
    if host is None:
        sys.path.insert(0, str(REPO / "tests"))
        from ollama_standin.server import Standin

        standin = Standin(args.work / "ollama-models").start()
        host = standin.url
        print(f"(the Ollama stand-in of the tests at {host}, models in {args.work / 'ollama-models'})")
    try:
        outcome = run(args.work, host, port=args.port, new_base=args.new_base, new_base_family=args.new_base_family)
    finally:
        if standin is not None:
            standin.stop()
    (args.work / "outcome.json").write_text(json.dumps(outcome, indent=2, default=str) + "\n")
    print(f"state: LOCALSERVE_STATE_DIR={os.environ['LOCALSERVE_STATE_DIR']} localserve versions demo")


if __name__ == "__main__":
    main()
