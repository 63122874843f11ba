"""`localserve eval` and the loop around it: the same suite on several targets, side by side, as a
table, JSON and an HTML report a browser shows; results attached to versions; a model in an Ollama
store evaluated without a server; and, on the embedded model, the whole loop — v2 promoted by the
gate, a broken v3 refused, and a rollback to v2's exact digest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from clihelpers import invoke

REPO = Path(__file__).resolve().parent.parent

SUITE = """
prompts: ["{{question}}"]
tests:
  - description: anything but silence
    vars: {question: "hello world"}
    assert:
      - type: not-contains
        value: "never in a tiny model's answer"
  - description: a fact a random model cannot know
    vars: {question: "What is the codename?"}
    assert:
      - type: icontains
        value: Bluebird
    metadata: {critical: true}
"""


@pytest.fixture
def suite(tmp_path) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE)
    return path


def test_eval_shows_every_target_side_by_side_and_writes_json_and_html(tiny_export, suite, tmp_path):
    gguf = tiny_export / "tiny-Q8_0.gguf"
    result = invoke("--quiet", "eval", suite, tiny_export, gguf, "--html", tmp_path / "r.html", "--max-tokens", "8")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert str(tiny_export)[-28:] in lines[0] and str(gguf)[-28:] in lines[0]
    assert lines[2].startswith("t1 ") and lines[2].count("pass") == 2
    assert lines[3].startswith("t2 !") and lines[3].count("FAIL") == 2  # critical, marked with !
    assert "1/2 passed" in lines[-2] and (tmp_path / "r.html").is_file()
    runs = json.loads(invoke("--quiet", "eval", suite, gguf, "--json", "--max-tokens", "8").output)
    (run,) = runs
    assert run["passed"] == 1 and run["total"] == 2 and run["target_info"]["engine"] == "llama.cpp"
    assert [c["passed"] for c in run["cases"]] == [True, False] and run["cases"][1]["critical"] is True


def test_results_attach_to_versions(tiny_export, suite, tmp_path):
    from localserve.lifecycle.places import StorePlace
    from localserve.lifecycle.store import VersionStore
    from localserve.lifecycle.versions import register_version

    with VersionStore() as store:
        register_version(tiny_export, StorePlace(tmp_path / "models"), store=store)
    result = invoke("--quiet", "eval", suite, "tiny:v1", "--record", "--max-tokens", "8")
    assert result.exit_code == 0, result.output
    with VersionStore() as store:
        (evaluation,) = store.evaluations(store.version("tiny:v1"))
    assert (evaluation["passed"], evaluation["total"], evaluation["target"]) == (1, 2, "tiny:v1")
    shown = json.loads(invoke("--quiet", "show", "tiny:v1").output)
    assert shown["version"] == "tiny:v1" and shown["evaluations"][0]["suite"] == str(suite)
    assert shown["registrations"][0]["model"] == "tiny:v1"
    listed = json.loads(invoke("--quiet", "versions", "tiny", "--json").output)
    assert [v["version"] for v in listed] == ["tiny:v1"] and listed[0]["evaluations"][0]["passed"] == 1


@pytest.mark.go
def test_a_model_in_an_ollama_store_answers_as_its_gguf_does_without_a_server(tiny_export, tmp_path):
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (the stored TEMPLATE is rendered by Ollama's template engine)")
    from localserve.lifecycle.places import StorePlace
    from localserve.lifecycle.store import VersionStore
    from localserve.lifecycle.targets import open_target
    from localserve.lifecycle.versions import register_version

    with VersionStore() as store:
        reg = register_version(tiny_export, StorePlace(tmp_path / "models"), store=store, quant="Q8_0")
    question = [{"role": "user", "content": "hello world"}]
    with open_target(f"store:{tmp_path / 'models'}#tiny:v1", max_tokens=12) as stored, \
            open_target(str(tiny_export / "tiny-Q8_0.gguf"), max_tokens=12) as gguf:
        a, b = stored.answer(question), gguf.answer(question)
        assert stored.info["manifest_digest"] == reg.manifest_digest
    assert a.error is None and a.text == b.text and a.prompt_tokens == b.prompt_tokens


@pytest.mark.parametrize("args, needle", [
    (["eval", "SUITE", "ollama:tiny:v1", "--host", "http://127.0.0.1:9"], "127.0.0.1:9"),
    (["eval", "SUITE", "no-such-target"], "no such file or folder"),
    (["eval", "SUITE", "nope:v3"], "nope:v3"),
    (["eval", "SUITE", "ollama:x", "--record"], "not a version"),
])
def test_bad_targets_are_one_line(suite, args, needle):
    result = invoke("--quiet", *[str(suite) if a == "SUITE" else a for a in args])
    assert result.exit_code != 0 and result.output.count("\n") == 1 and needle in result.output, result.output


def test_a_malformed_suite_names_its_line(tmp_path, tiny_export):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tests:\n  - vars: {question: hi}\n    assert:\n      - type: llm-rubric\n        value: x\n")
    result = invoke("--quiet", "eval", bad, tiny_export)
    assert result.exit_code == 2 and "llm-rubric" in result.output and "bad.yaml" in result.output
    assert result.output.count("\n") == 1


def _runs():
    from localserve.lifecycle.results import Answer, AssertionResult, CaseResult, EvalRun

    def run(target, answers):
        cases = []
        for (cid, critical), text in zip([("t1", True), ("t2", False)], answers):
            ok = "Bluebird" in text if cid == "t1" else "violet" in text
            cases.append(CaseResult(cid, Answer(text, 0.2), (AssertionResult(
                "icontains", ok, float(ok), f"expected {'Bluebird' if cid == 't1' else 'violet'}"),), critical))
        return EvalRun("suite.yaml", "a" * 64, target, {}, tuple(cases), "2026-12-01T00:00:00+00:00", {"seed": 0})

    return [run("demo:v1", ["It is Bluebird.", "It is red <b>really</b>."]),
            run("demo:v2", ["It is Bluebird.", "It is violet."])]


def test_the_html_report_shows_two_versions_side_by_side_in_a_browser(tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/bootstrap_browser.sh installs it)")
    from html.parser import HTMLParser

    from localserve.lifecycle.report import write_report

    path = write_report(_runs(), tmp_path / "report.html")
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                          path.as_uri()], capture_output=True, text=True, timeout=120, check=True).stdout

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.headers, self.cells, self._in = [], [], None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "th" and attrs.get("class") == "target":
                self._in = "header"
                self.headers.append("")
            if tag == "td" and "data-passed" in attrs:
                self.cells.append([attrs["data-passed"], ""])
                self._in = "cell"

        def handle_endtag(self, tag):
            if tag in ("th", "td"):
                self._in = None

        def handle_data(self, data):
            if self._in == "header":
                self.headers[-1] += data
            elif self._in == "cell":
                self.cells[-1][1] += data

    parsed = Cells()
    parsed.feed(dom)
    assert parsed.headers == ["demo:v1", "demo:v2"]
    assert [passed for passed, _ in parsed.cells] == ["true", "true", "false", "true"]
    failing = parsed.cells[2][1]
    assert "FAIL icontains: expected violet" in failing and "<b>really</b>" in failing  # the answer, escaped
    assert "critical" in dom and 'class="differs"' in dom


@pytest.mark.slow
@pytest.mark.go
def test_the_lifecycle_loop_on_the_embedded_model(tmp_path, embedded_base):
    if shutil.which("go") is None:
        pytest.skip("Go is not installed (the store's TEMPLATE is rendered by Ollama's template engine)")
    sys.path.insert(0, str(REPO / "scripts"))
    from lifecycle_demo import run

    from localserve.lifecycle.store import VersionStore

    outcome = run(tmp_path, log=lambda *_: None)
    assert outcome["versions"] == {"v1": "demo:v1", "v2": "demo:v2", "v3": "demo:v3"}
    v2 = outcome["v2"]
    assert v2["decision"]["promote"] and v2["comparison"]["fixed"] == ["t2"] and not v2["comparison"]["broken"]
    assert outcome["v3"] == "refused"
    assert outcome["rollback"]["version"] == "demo:v2"
    assert outcome["latest_digest"] == outcome["digests"]["v2"] != outcome["digests"]["v3"]
    with VersionStore() as store:
        events = store.events(alias="demo:latest")
        refused = next(e for e in events if e["action"] == "refuse")
        assert refused["version"] == "demo:v3" and refused["payload"]["critical_broken"] == ["t1"]
        assert [e["action"] for e in events] == ["promote", "promote", "refuse", "promote", "rollback"]
        assert len(store.evaluations(store.version("demo:v2"))) >= 1
    report = Path(outcome["report"]).read_text()
    assert "demo:v1" in report and "demo:v2" in report
