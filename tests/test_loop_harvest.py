"""harvest: captured failures with a correction become chat JSONL that TRL reads (deduplicated by normalized
prompt, the latest correction kept), the others a review file, the corrected ones golden-suite cases too;
--where is ab decide's condition language over a request's fields; bad input is one line and writes nothing."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from clihelpers import assert_one_line_error, invoke
from localserve.lifecycle.assertions import check
from localserve.lifecycle.results import Answer
from localserve.lifecycle.suites import load_suite
from localserve.router import experiment as ex
from localserve.router.arms import Arm
from localserve.router.capture import Capture, CaptureSettings, CaptureStore, capture_path
from localserve.router.log import RequestLog, RequestRow

NAME = "shop"
V1, V2 = f"{NAME}:v1", f"{NAME}:v2"
SYSTEM = "You answer questions about the shop."


def start_experiment(capture: CaptureSettings | None = CaptureSettings()) -> None:
    arms = [Arm(v, 50.0, "ollama", "http://127.0.0.1:9", v) for v in (V1, V2)]
    ex.save(ex.Experiment(NAME, arms, V1, "http://127.0.0.1:9", 9, time.time() - 3600, capture=capture))


class Traffic:
    """Requests as the router would have logged and captured them, `ago` seconds back."""

    def __init__(self):
        self.log = RequestLog()
        self.store = CaptureStore(capture_path(NAME))
        self.n = 0

    def close(self) -> None:
        self.log.close()
        self.store.close()

    def chat(self, question: str, answer: str, *, ago: float = 60.0, system: str | None = SYSTEM, arm: str = V1,
             score: float | None = None, finish_reason: str = "stop", error: str | None = None,
             correction: str | None = None, corrected_ago: float | None = None, route: str = "/api/chat") -> str:
        self.n += 1
        rid = f"req-{self.n:03d}"
        at = time.time() - ago
        self.log.add(RequestRow(rid, NAME, at, route, arm, "u", True, 200, 0.5, 0.1, 10, 20, finish_reason,
                                len(answer), error))
        if route == "/api/generate":
            capture = Capture(rid, at, route, arm, None, system, question, answer)
        else:
            turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
            capture = Capture(rid, at, route, arm, tuple(turns), None, None, answer)
        self.store.add_many([capture])
        if score is not None:
            self.log.add_feedback(rid, score)
        if correction is not None:
            self.store.correct(rid, correction, None, at=time.time() - (corrected_ago if corrected_ago is not None
                                                                          else ago / 2))
        return rid


@pytest.fixture
def traffic():
    start_experiment()
    t = Traffic()
    yield t
    t.close()


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_corrected_failures_become_chat_data_the_others_a_review_file_and_suite_cases(traffic, tmp_path):
    fixed = traffic.chat("When do you open on Sundays?", "We are open every day.", score=-1,
                         correction="We open at 10 on Sundays.")
    traffic.chat("Do you deliver?", "Yes.", score=1)  # not a failure: neither data nor review
    runaway = traffic.chat("List every product.", "Apples, pears, plums, apples, pears", finish_reason="length")
    failed = traffic.chat("Where is the shop?", "", error="arm failed mid-stream")
    generated = traffic.chat("Price of apples?", "Free!", route="/api/generate", score=-1,
                             correction="Apples cost 2 euros a kilo.")

    result = invoke("harvest", NAME, "--data", tmp_path / "new.jsonl", "--review", tmp_path / "review.jsonl",
                    "--suite", tmp_path / "cases.yaml")
    assert result.exit_code == 0, result.output
    assert "5 captured, 4 matched --where" in result.output
    assert "harvested 2 into" in result.output and "(0 deduplicated)" in result.output
    assert "to review 2 in" in result.output and "skipped 0" in result.output

    data = read_jsonl(tmp_path / "new.jsonl")
    assert data == [
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "When do you open on Sundays?"},
                      {"role": "assistant", "content": "We open at 10 on Sundays."}]},
        {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Price of apples?"},
                      {"role": "assistant", "content": "Apples cost 2 euros a kilo."}]}]
    review = read_jsonl(tmp_path / "review.jsonl")
    assert [r["request_id"] for r in review] == [runaway, failed]
    assert review[0]["finish_reason"] == "length" and review[0]["answer"].startswith("Apples, pears")
    assert review[1]["error"] == "arm failed mid-stream" and review[1]["messages"][-1]["content"] == "Where is the shop?"

    suite = load_suite(tmp_path / "cases.yaml")  # as the golden-suite gate reads it
    assert [c.messages[-1]["content"] for c in suite.cases] == ["When do you open on Sundays?", "Price of apples?"]
    raw = yaml.safe_load((tmp_path / "cases.yaml").read_text())
    assert [t["metadata"] for t in raw["tests"]] == [{"source": "harvest", "request_id": fixed},
                                                     {"source": "harvest", "request_id": generated}]
    case = suite.cases[0]
    assert all(check(a, Answer("Yes: we open at 10 on Sundays.", 0.1)).passed for a in case.assertions)
    assert not any(check(a, Answer("We are open every day.", 0.1)).passed for a in case.assertions)


def test_the_same_prompt_once_normalized_gives_one_line_with_the_latest_correction(traffic, tmp_path):
    traffic.chat("What is your  RETURN policy?", "None.", ago=300, score=-1, correction="30 days.", corrected_ago=200)
    traffic.chat("what is your return\npolicy?", "Ask us.", ago=250, score=-1, correction="30 days, with receipt.",
                 corrected_ago=100)
    traffic.chat("What is your return policy? ", "No idea.", ago=240, score=-1)  # covered by the correction
    traffic.chat("What is your return policy?", "Hmm.", ago=230, system="Be brief.", score=-1,
                 correction="30 days.")  # another system prompt: another prompt

    result = invoke("harvest", NAME, "--data", tmp_path / "new.jsonl", "--json")
    assert result.exit_code == 0, result.output
    counts = json.loads(result.stdout)
    assert (counts["matched"], counts["harvested"], counts["deduplicated"], counts["to_review"]) == (4, 2, 2, 0)
    data = read_jsonl(tmp_path / "new.jsonl")
    assert [d["messages"][-1]["content"] for d in data] == ["30 days, with receipt.", "30 days."]
    assert data[1]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert (tmp_path / "new.review.jsonl").read_text() == ""  # the default review file, beside the data


def test_where_picks_with_the_condition_language_and_since_limits_the_window(traffic, tmp_path):
    traffic.chat("old question", "old answer", ago=3 * 86400, finish_reason="length", correction="old fix")
    traffic.chat("slow one", "ok", arm=V2, finish_reason="length", correction="fast fix")
    traffic.chat("fine one", "ok", arm=V1, score=-1, correction="better")

    result = invoke("harvest", NAME, "--data", tmp_path / "new.jsonl", "--since", "1d", "--json",
                    "--where", f"finish_reason = length and not arm = '{V1}'")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["considered"] == 2
    assert [d["messages"][-1]["content"] for d in read_jsonl(tmp_path / "new.jsonl")] == ["fast fix"]


def test_a_suite_grows_and_harvesting_twice_adds_no_case_twice(traffic, tmp_path):
    suite = tmp_path / "golden.yaml"
    suite.write_text("description: golden\ntests:\n  - vars: {question: 'Do you sell pears?'}\n"
                     "    assert: [{type: icontains, value: pears}]\n")
    traffic.chat("Do you sell plums?", "No.", score=-1, correction="Yes, in summer.")
    for added in (1, 0):
        result = invoke("harvest", NAME, "--data", tmp_path / "new.jsonl", "--suite", suite, "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["suite_cases"] == added
    cases = load_suite(suite).cases
    assert [c.messages[-1]["content"] for c in cases] == ["Do you sell pears?", "Do you sell plums?"]
    assert load_suite(suite).name == "golden"


def test_harvest_output_loads_with_trl_and_round_trips(traffic, tmp_path, tiny_base):
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational

    traffic.chat("Is the café open?", "Nope", score=-1, correction="Yes — until 18:00, {{ every }} day.")
    traffic.chat("Gift cards?", "??", route="/api/generate", system=None, score=-1, correction="Yes, from 10 euros.")
    assert invoke("harvest", NAME, "--data", tmp_path / "new.jsonl").exit_code == 0

    dataset = load_dataset("json", data_files=str(tmp_path / "new.jsonl"), split="train")
    assert [row for row in dataset] == read_jsonl(tmp_path / "new.jsonl")  # round trip, unicode and braces kept
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    for row in dataset:
        assert is_conversational(row)
        rendered = apply_chat_template(row, tokenizer)
        # the whole conversation through the tokenizer's template, the correction as the last (assistant) turn
        assert rendered["text"].endswith(row["messages"][-1]["content"] + "<|im_end|>\n")
    assert "<|im_start|>system" not in apply_chat_template(dataset[1], tokenizer)["text"]


def test_a_where_that_does_not_parse_names_the_column_and_writes_nothing(traffic, tmp_path):
    traffic.chat("q", "a", score=-1, correction="c")
    for where, needles in (("feedback <<< 0", ["column 11", "unexpected '<'"]),
                           ("feedbak < 0", ["column 1", "unknown field 'feedbak'"]),
                           ("finish_reason < 2", ["column 15", "finish_reason is text"]),
                           ("(error or feedback < 0", ["column 1", "'(' is not closed"]),
                           ("error or", ["column 9", "ends too early"]),
                           ("__import__('os') == 1", ["column 1", "unknown field '__import__'"])):
        result = invoke("harvest", NAME, "--data", tmp_path / "new.jsonl", "--where", where)
        assert_one_line_error(result, *needles)
    assert list(tmp_path.iterdir()) == []


def test_a_damaged_capture_database_is_named_and_nothing_is_written(traffic, tmp_path):
    traffic.chat("q", "a", score=-1, correction="c")
    traffic.close()
    path = capture_path(NAME)
    for leftover in path.parent.glob(path.name + "-*"):  # the WAL was checkpointed into the file at close
        leftover.unlink()
    path.write_bytes(b"this is not a database, it was overwritten" * 200)
    result = invoke("harvest", NAME, "--data", tmp_path / "new.jsonl")
    assert_one_line_error(result, f"the capture database {path}", "move the file away")
    assert list(tmp_path.iterdir()) == []


def test_harvest_without_capture_says_how_to_turn_it_on(tmp_path):
    start_experiment(capture=None)
    result = invoke("harvest", NAME, "--data", tmp_path / "new.jsonl")
    assert_one_line_error(result, "has captured no conversations (capture is off)", f"ab start {NAME} --capture")
    assert_one_line_error(invoke("harvest", "nobody", "--data", tmp_path / "x.jsonl"), "no A/B experiment named")
    assert list(tmp_path.iterdir()) == []
