"""The quality gate inside `localserve export`: --quant auto, --max-kl, --max-size, --quality-data."""

from __future__ import annotations

import json

import pytest

from clihelpers import assert_one_line_error, chat_jsonl, run_cli
from localserve import ExportSpec, export


# --- quality gate inside export ------------------------------------------------------------------

@pytest.fixture(scope="module")
def auto_exports(tiny_adapter, tmp_path_factory):
    """--quant auto twice on one folder: a loose bound, then a tight one (candidates are reused)."""
    out = tmp_path_factory.mktemp("auto") / "tiny"
    common = dict(adapter=tiny_adapter, quants=("auto",), name="tiny", out=out, smoke=False, register=False,
                  keep_intermediate=True)
    loose = export(ExportSpec(max_kl=0.05, **common))
    loose_lineage = json.loads((out / "localserve.json").read_text())
    tight = export(ExportSpec(max_kl=0.0008, **common))
    tight_lineage = json.loads((out / "localserve.json").read_text())
    return loose, loose_lineage, tight, tight_lineage


def test_quant_auto_picks_a_larger_quant_when_the_bound_is_tighter(auto_exports):
    loose, loose_lineage, tight, tight_lineage = auto_exports
    (loose_art,), (tight_art,) = loose.artifacts, tight.artifacts
    assert tight_art.size > loose_art.size, (loose_art.quant, tight_art.quant)
    rows = {r["quant"]: r for r in tight_lineage["quality"]["rows"]}
    assert rows[tight_art.quant]["kl_mean"] <= 0.0008
    smaller = [r for r in rows.values() if r["size"] < rows[tight_art.quant]["size"]]
    assert smaller and all(r["kl_mean"] > 0.0008 for r in smaller), "the smallest quant meeting the bound wins"
    assert loose_lineage["quality"]["max_kl"] == 0.05 and len(loose_lineage["quality"]["rows"]) >= 6


def test_quant_auto_writes_the_quality_chart(auto_exports):
    loose = auto_exports[0]
    png = loose.out_dir / "quality.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_a_requested_quant_that_misses_the_bound_is_an_error_showing_the_table(tiny_adapter, tmp_path):
    from localserve.errors import QualityBoundNotMet

    with pytest.raises(QualityBoundNotMet) as info:
        export(ExportSpec(adapter=tiny_adapter, quants=("Q2_K",), out=tmp_path / "o", smoke=False,
                          register=False, max_kl=1e-7))
    assert "Q2_K" in str(info.value) and "KL mean" in str(info.value)
    assert not (tmp_path / "o" / "localserve.json").exists()


def test_quant_auto_needs_a_bound(tiny_adapter):
    result = run_cli("export", str(tiny_adapter), "--quant", "auto")
    assert_one_line_error(result, "--max-kl")


def test_a_size_bound_alone_measures_the_quants_that_fit_and_keeps_the_most_faithful(auto_exports):
    loose, loose_lineage = auto_exports[0], auto_exports[1]
    sizes = {r["quant"]: r["size"] for r in loose_lineage["quality"]["rows"]}
    limit = sizes["Q4_K_M"]  # Q5_K_M, Q6_K and Q8_0 are larger
    result = export(ExportSpec(adapter=loose_lineage["adapter"]["path"], quants=("auto",), name="tiny",
                               out=loose.out_dir, smoke=False, register=False, keep_intermediate=True,
                               max_size=limit))
    quality = json.loads((loose.out_dir / "localserve.json").read_text())["quality"]
    rows = {r["quant"]: r for r in quality["rows"]}
    assert set(rows) == {q for q, n in sizes.items() if n <= limit}, "every candidate that fits is measured"
    assert quality["over_size"] == {q: n for q, n in sizes.items() if n > limit}
    (art,) = result.artifacts
    assert art.quant == quality["chosen"] == min(rows, key=lambda q: rows[q]["kl_mean"])
    assert quality["max_size"] == limit and quality["max_kl"] is None


def test_a_size_bound_no_candidate_fits_is_an_error_naming_their_sizes(auto_exports):
    from localserve.errors import QualityBoundNotMet

    loose, loose_lineage = auto_exports[0], auto_exports[1]
    with pytest.raises(QualityBoundNotMet, match=r"no candidate quant fits --max-size 1.00 KB \(Q2_K "):
        export(ExportSpec(adapter=loose_lineage["adapter"]["path"], quants=("auto",), name="tiny",
                          out=loose.out_dir, smoke=False, register=False, keep_intermediate=True, max_size=1000))


def test_both_bounds_keep_the_smallest_quant_meeting_both(auto_exports):
    loose, loose_lineage = auto_exports[0], auto_exports[1]
    sizes = {r["quant"]: r["size"] for r in loose_lineage["quality"]["rows"]}
    limit = sizes["Q6_K"]
    result = export(ExportSpec(adapter=loose_lineage["adapter"]["path"], quants=("auto",), name="tiny",
                               out=loose.out_dir, smoke=False, register=False, keep_intermediate=True,
                               max_kl=0.05, max_size=limit))
    rows = json.loads((loose.out_dir / "localserve.json").read_text())["quality"]["rows"]
    meeting = [r for r in rows if r["kl_mean"] <= 0.05 and r["size"] <= limit]
    assert result.artifacts[0].quant == min(meeting, key=lambda r: r["size"])["quant"]
    assert "Q8_0" not in {r["quant"] for r in rows}, "a candidate over --max-size is not measured"


def test_a_requested_quant_over_the_size_bound_is_an_error_showing_the_table(tiny_adapter, tmp_path):
    out = tmp_path / "o"
    result = run_cli("--quiet", "export", str(tiny_adapter), "--quant", "Q8_0", "--max-size", "1MB",
                     "--out", str(out), "--no-smoke", "--no-register")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    error = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    assert lines[error].startswith("error: Q8_0 (") and "misses --max-size 1.00 MB" in lines[error], result.output
    table = lines[error + 1:]
    assert table[0].startswith("quant ") and "KL mean" in table[0], "the measured table is shown"
    assert table[2].startswith("Q8_0 ")
    assert lines[-1].endswith("pick a smaller quant, use --quant auto, or loosen the bound")
    assert not (out / "localserve.json").exists()


def test_quality_data_is_what_the_gate_measures_on_rendered_through_the_chat_template(auto_exports, tmp_path):
    from localserve.fsutil import sha256_file
    from localserve.llamacpp import evaluate
    from localserve.quality.text import load_chat_jsonl

    loose, loose_lineage = auto_exports[0], auto_exports[1]
    chat = chat_jsonl(tmp_path / "chat.jsonl")
    result = run_cli("--quiet", "export", loose_lineage["adapter"]["path"], "--name", "tiny", "--out",
                     str(loose.out_dir), "--quant", "auto", "--max-kl", "0.05", "--quality-data", str(chat),
                     "--keep-intermediate", "--no-smoke", "--no-register")
    assert result.exit_code == 0, result.output
    lineage = json.loads((loose.out_dir / "localserve.json").read_text())
    text = lineage["quality"]["text"]
    assert text["source"] == str(chat) and text["sha256"] == sha256_file(chat)
    assert lineage["spec"]["quality_data"] == str(chat.resolve())
    gguf = loose.out_dir / ".localserve" / "work" / "candidates" / "tiny-Q8_0.gguf"
    rendered = load_chat_jsonl(chat, evaluate.chat_template(gguf))
    assert "<|im_start|>assistant" in rendered.texts[0]
    assert text["n_tokens"] == len(evaluate.tokenize(gguf, rendered.texts, special=True).ids)
    assert text["n_tokens"] != loose_lineage["quality"]["text"]["n_tokens"]


def test_quality_data_needs_a_bound_and_a_gguf_export(tiny_adapter, tmp_path):
    chat = chat_jsonl(tmp_path / "chat.jsonl")
    assert_one_line_error(run_cli("export", str(tiny_adapter), "--quality-data", str(chat)), "--quality-data",
                           "--max-kl")
    assert_one_line_error(run_cli("export", str(tiny_adapter), "--target", "vllm", "--quality-data", str(chat)),
                           "--quality-data")
