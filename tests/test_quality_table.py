"""The quality gate's pure parts: the metrics' definitions, choosing a quant, text loading, the table.

The end-to-end measurements on the embedded model (real llama.cpp) are in test_quality_gate.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from localserve.errors import InputError, QualityBoundNotMet
from localserve.quality import QualityRow, QualityTable, check_quant, choose_quant
from localserve.quality.chart import published_reference
from localserve.quality.metrics import Comparison
from localserve.quality.text import default_corpus, load_chat_jsonl, load_text

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"


def _row(quant: str, size: int, kl: float, imatrix: bool = False) -> QualityRow:
    return QualityRow(file=f"m-{quant}.gguf", path=f"/x/m-{quant}.gguf", quant=quant, imatrix=imatrix, size=size,
                      bpw=16.0 * size / 270_000_000, ppl=10 * (1 + kl), ppl_ratio=1 + kl, kl_mean=kl,
                      kl_p99=kl * 4, top1=1 - kl, seconds=1.0)


# Sizes and KLs shaped like a real ladder (largest file first, as measure() sorts them).
LADDER = QualityTable(rows=(_row("F16", 270_000_000, 0.00002), _row("Q8_0", 145_000_000, 0.004),
                            _row("Q6_K", 138_000_000, 0.01), _row("Q4_K_M", 105_000_000, 0.06),
                            _row("Q3_K_S", 90_000_000, 0.3, imatrix=True), _row("Q2_K", 88_000_000, 0.4)),
                      reference={"path": "/x/hf", "kind": "hf", "ppl": 10.0, "seconds": 2.0},
                      text={"source": "t.txt", "n_tokens": 500, "n_positions": 499, "n_ctx": 512, "chunks": 1})


def test_kl_of_identical_distributions_is_zero_and_top1_agrees():
    lp = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype=np.float32))
    cmp = Comparison()
    cmp.add(lp, lp.copy(), np.array([0, 2]))
    m = cmp.result()
    assert m.kl_mean == pytest.approx(0.0, abs=1e-7)
    assert m.top1 == 1.0
    assert m.ppl == pytest.approx(math.exp(-(math.log(0.7) + math.log(0.8)) / 2), rel=1e-6)


def test_kl_matches_its_definition_and_counts_top1_disagreements():
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    q = np.array([[0.25, 0.75], [0.6, 0.4]])
    cmp = Comparison()
    cmp.add(np.log(p).astype(np.float32), np.log(q).astype(np.float32), np.array([1, 0]))
    m = cmp.result()
    expected = [sum(pi * math.log(pi / qi) for pi, qi in zip(pr, qr)) for pr, qr in zip(p, q)]
    assert m.kl_mean == pytest.approx(np.mean(expected), rel=1e-5)
    assert m.kl_p99 == pytest.approx(np.percentile(expected, 99), rel=1e-5)
    # argmax differs on row 0 only (0 or 0 vs 1), agrees on row 1
    assert m.top1 == 0.5
    assert m.ppl == pytest.approx(math.exp(-(math.log(0.75) + math.log(0.6)) / 2), rel=1e-5)


def test_comparison_refuses_mismatched_shapes():
    with pytest.raises(ValueError):
        Comparison().add(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32), np.array([0, 1]))


def test_choose_quant_keeps_the_smallest_file_within_the_kl_bound():
    assert choose_quant(LADDER, max_kl=0.05).quant == "Q6_K"
    assert choose_quant(LADDER, max_kl=0.5).quant == "Q2_K"


def test_a_tighter_kl_bound_picks_a_larger_file():
    loose, tight = choose_quant(LADDER, max_kl=0.1), choose_quant(LADDER, max_kl=0.005)
    assert tight.size > loose.size
    assert tight.kl_mean <= 0.005 < loose.kl_mean


def test_a_size_bound_alone_keeps_the_most_faithful_file_that_fits():
    # within 100 MB: Q3_K_S+imatrix (KL 0.3) and Q2_K (KL 0.4); the smaller file is the worse one
    assert choose_quant(LADDER, max_size="100MB").quant == "Q3_K_S"
    assert choose_quant(LADDER, max_size="140MB").quant == "Q6_K"
    assert choose_quant(LADDER, max_size="1GB").quant == "F16"


def test_both_bounds_keep_the_smallest_file_meeting_both():
    assert choose_quant(LADDER, max_kl=0.5, max_size="140MB").quant == "Q2_K"
    # within 140 MB only Q6_K and smaller fit; of those only Q6_K has KL <= 0.02
    assert choose_quant(LADDER, max_kl=0.02, max_size="140MB").quant == "Q6_K"


def test_no_quant_meeting_the_bound_is_an_error_showing_the_table():
    with pytest.raises(QualityBoundNotMet) as e:
        choose_quant(LADDER, max_kl=0.01, max_size="100MB")
    text = str(e.value)
    assert "mean KL <= 0.01" in text and "size <= 100.00 MB" in text
    for r in LADDER.rows:
        assert r.file in text


def test_choose_quant_without_any_bound_is_an_input_error():
    with pytest.raises(InputError, match="needs a bound"):
        choose_quant(LADDER)


def test_a_requested_quant_missing_the_bound_is_an_error_showing_the_table():
    assert check_quant(LADDER, "Q8_0", max_kl=0.05).quant == "Q8_0"
    with pytest.raises(QualityBoundNotMet) as e:
        check_quant(LADDER, "Q4_K_M", max_kl=0.05)
    assert "Q4_K_M (m-Q4_K_M.gguf) misses --max-kl 0.05" in str(e.value)
    assert "m-Q8_0.gguf" in str(e.value)  # the whole table is shown
    assert check_quant(LADDER, "Q3_K_S+imatrix").imatrix


def test_unknown_row_lists_the_measured_ones():
    with pytest.raises(InputError, match="measured: F16, Q8_0, Q6_K, Q4_K_M, Q3_K_S\\+imatrix, Q2_K"):
        LADDER.row("Q5_K_M")


def test_table_text_has_one_line_per_file_and_names_reference_and_text():
    lines = LADDER.format().splitlines()
    assert lines[0].split()[:3] == ["quant", "file", "size"]
    body = lines[2:2 + len(LADDER.rows)]
    assert [ln.split()[0] for ln in body] == [r.label for r in LADDER.rows]
    q8 = body[1].split()
    assert q8[0] == "Q8_0" and "145.00" in q8 and "99.6%" in q8  # size in MB, top-1 as a percentage
    assert lines[-2].startswith("reference: /x/hf (HF model, fp32)")
    assert lines[-1].startswith("text: t.txt: 500 tokens")


def test_json_round_trips():
    data = json.loads(json.dumps(LADDER.to_json()))
    assert data["rows"][4]["label"] == "Q3_K_S+imatrix"
    assert QualityTable.from_json(data) == LADDER


def test_published_reference_names_its_source_and_orders_quants_by_kl():
    pub = published_reference()
    assert "llama.cpp" in pub["source"] and "perplexity/README.md" in pub["source"]
    plain = {r["quant"]: r for r in pub["rows"] if not r["imatrix"]}
    assert plain["Q8_0"]["kl_mean"] < plain["Q6_K"]["kl_mean"] < plain["Q4_K_M"]["kl_mean"] < plain["Q2_K"]["kl_mean"]
    assert 8 < plain["Q8_0"]["bpw"] < 9 and 3 < plain["Q2_K"]["bpw"] < 3.5


def test_default_corpus_is_shipped_and_substantial():
    t = load_text(None)
    assert t.source.startswith("default corpus")
    assert default_corpus().is_file()
    assert len(t.texts[0].split()) > 1500


def _smollm2_template() -> tuple[str, str, str]:
    cfg = json.loads((TEMPLATES / "SmolLM2-135M-Instruct" / "tokenizer_config.json").read_text())
    return cfg["chat_template"], cfg["bos_token"], cfg["eos_token"]


def test_chat_jsonl_is_rendered_through_the_chat_template(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
        {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]},
        {"prompt": "Name a colour.", "completion": "Blue."},
        {"text": "plain line"},
    ]) + "\n\n")
    t = load_chat_jsonl(data, _smollm2_template())
    assert t.special
    assert t.texts[0] == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
                          "<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n")
    assert "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>" in t.texts[1]
    assert "<|im_start|>assistant\nBlue.<|im_end|>" in t.texts[2]
    assert t.texts[3] == "plain line"


@pytest.mark.parametrize("line, message", [
    ("{not json", "train.jsonl:2 is not valid JSON"),
    ('{"messages": "hi"}', "train.jsonl:2 is not a chat record"),
    ("[1, 2]", "train.jsonl:2 is not a JSON object"),
])
def test_bad_jsonl_lines_are_named_by_file_and_line(tmp_path, line, message):
    data = tmp_path / "train.jsonl"
    data.write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(InputError, match=message):
        load_chat_jsonl(data, _smollm2_template())


def test_chat_records_without_a_template_are_refused(tmp_path):
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    with pytest.raises(InputError, match="no chat template"):
        load_chat_jsonl(data, None)


def test_missing_or_empty_text_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no such text file"):
        load_text(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InputError, match="is empty"):
        load_text(tmp_path / "empty.txt")
