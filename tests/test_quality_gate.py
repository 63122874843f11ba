"""The quality gate end to end on the embedded model (SmolLM2-135M-Instruct), with real llama.cpp.

One F16 conversion, each quant written once, one measurement of all of them against the HF model
in fp32 (session fixtures); the tests read that table. The evaluation text is a short slice of the
shipped corpus; the importance matrix is computed from the rest of it (same domain, other text).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from localserve.errors import InputError, QualityBoundNotMet, ToolError
from localserve.quality import choose_quant, default_corpus, measure

pytestmark = pytest.mark.slow

PLAIN = ("Q8_0", "Q4_K_M", "Q3_K_S", "Q2_K")
WITH_IMATRIX = ("Q3_K_S", "Q2_K")


@pytest.fixture(scope="session")
def corpus_parts(tmp_path_factory) -> tuple[Path, Path]:
    """(evaluation text of ~400 tokens, imatrix text: the rest of the corpus)."""
    paragraphs = default_corpus().read_text(encoding="utf-8").split("\n\n")
    folder = tmp_path_factory.mktemp("texts")
    # the lighthouse story (a few paragraphs) is the evaluation text; everything after it trains the imatrix
    split = next(i for i, p in enumerate(paragraphs) if p.startswith("How a hash table"))
    evaluation, domain = folder / "eval.txt", folder / "domain.txt"
    evaluation.write_text("\n\n".join(paragraphs[:split]), encoding="utf-8")
    domain.write_text("\n\n".join(paragraphs[split:]), encoding="utf-8")
    return evaluation, domain


@pytest.fixture(scope="session")
def f16_gguf(embedded_base, tmp_path_factory) -> Path:
    from localserve.llamacpp.convert import convert_hf_to_gguf

    return convert_hf_to_gguf(embedded_base, tmp_path_factory.mktemp("f16") / "smollm2-F16.gguf", outtype="f16")


@pytest.fixture(scope="session")
def imatrix_file(f16_gguf, corpus_parts) -> Path:
    from localserve.llamacpp.imatrix import compute_imatrix

    return compute_imatrix(f16_gguf, corpus_parts[1], f16_gguf.parent / "imatrix.gguf")


@pytest.fixture(scope="session")
def quants(f16_gguf, imatrix_file) -> dict[str, Path]:
    from localserve.llamacpp.quantize import quantize

    out = {}
    for q in PLAIN:
        out[q] = quantize(f16_gguf, f16_gguf.parent / f"smollm2-{q}.gguf", q)
    for q in WITH_IMATRIX:
        out[f"{q}+imatrix"] = quantize(f16_gguf, f16_gguf.parent / f"smollm2-{q}-imatrix.gguf", q, imatrix_file)
    return out


@pytest.fixture(scope="session")
def table(f16_gguf, quants, embedded_base, corpus_parts):
    return measure([f16_gguf, *quants.values()], embedded_base, text=corpus_parts[0])


def test_every_file_is_measured_on_the_same_tokens(table, quants):
    assert [r.label for r in table.rows][0] == "F16"  # largest first
    assert {r.label for r in table.rows} == {"F16", *quants}
    assert table.reference["kind"] == "hf"
    assert 200 < table.text["n_tokens"] < 700
    assert table.text["n_positions"] == table.text["n_tokens"] - table.text["chunks"]


def test_f16_gguf_matches_the_hf_model(table):
    f16 = table.row("F16")
    assert f16.kl_mean < 1e-3
    assert f16.top1 > 0.99
    assert f16.ppl_ratio == pytest.approx(1.0, abs=0.01)
    assert 15.9 < f16.bpw < 16.1


def test_q2_k_is_measurably_worse_than_q8_0_on_every_metric(table):
    q8, q2 = table.row("Q8_0"), table.row("Q2_K")
    assert q2.kl_mean > 5 * q8.kl_mean
    assert q2.kl_p99 > 2 * q8.kl_p99
    assert q2.top1 < q8.top1 - 0.05
    assert q2.ppl_ratio > q8.ppl_ratio + 0.05
    assert q2.ppl > q8.ppl
    assert q2.size < q8.size and q2.bpw < q8.bpw


def test_an_imatrix_from_the_domain_lowers_the_kl_of_a_low_bit_quant(table, imatrix_file):
    assert imatrix_file.stat().st_size > 10_000
    gains = {q: table.row(f"{q}+imatrix").kl_mean / table.row(q).kl_mean for q in WITH_IMATRIX}
    assert all(table.row(f"{q}+imatrix").imatrix for q in WITH_IMATRIX)
    assert min(gains.values()) < 0.95, f"KL with/without imatrix: {gains}\n{table.format()}"
    # the imatrix changes precision, not the type: same size as without it
    for q in WITH_IMATRIX:
        assert table.row(f"{q}+imatrix").size == pytest.approx(table.row(q).size, rel=0.02)


def test_auto_choice_picks_a_larger_quant_when_the_bound_is_tighter(table):
    loose = choose_quant(table, max_kl=0.5)
    tight = choose_quant(table, max_kl=0.01)
    assert tight.size > loose.size
    assert tight.kl_mean <= 0.01 and loose.kl_mean <= 0.5
    # nothing smaller than the choice meets the bound
    assert all(r.kl_mean > 0.01 for r in table.rows if r.size < tight.size)
    with pytest.raises(QualityBoundNotMet, match="smollm2-Q8_0.gguf"):
        choose_quant(table, max_kl=0.01, max_size=tight.size - 1)


def test_the_chart_is_written(table, tmp_path):
    path = table.write_chart(tmp_path / "quality.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000
    assert [p.name for p in tmp_path.iterdir()] == ["quality.png"]  # no temp file left behind


def test_cli_measures_chat_data_against_an_f16_gguf_and_prints_json(f16_gguf, quants, tmp_path):
    from localserve.cli import cli

    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [
        {"role": "user", "content": f"What is {a} plus {b}?"},
        {"role": "assistant", "content": f"{a} plus {b} is {a + b}. Adding is counting on from the first number."}]})
        for a, b in [(2, 3), (10, 7), (41, 1), (6, 6), (12, 30), (5, 9)]) + "\n")
    chart = tmp_path / "chart.png"
    result = CliRunner().invoke(cli, ["--quiet", "quality", str(quants["Q8_0"]), str(quants["Q2_K"]),
                                      "--reference", str(f16_gguf), "--data", str(data), "--json",
                                      "--chart", str(chart)])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["reference"]["kind"] == "gguf"
    assert out["text"]["source"] == str(data)
    assert [r["quant"] for r in out["rows"]] == ["Q8_0", "Q2_K"]
    assert out["rows"][0]["kl_mean"] < out["rows"][1]["kl_mean"]
    assert out["chart"] == str(chart) and chart.read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input_is_one_line_and_exit_2(f16_gguf, tmp_path):
    from localserve.cli import cli

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "hi"}]}\n{oops\n')
    result = CliRunner().invoke(cli, ["quality", str(f16_gguf), "--reference", str(f16_gguf), "--data", str(bad)])
    assert result.exit_code == 2
    assert result.output.strip().splitlines()[-1].startswith(f"error: {bad}:2 is not valid JSON")


def test_imatrix_needs_enough_text(f16_gguf, tmp_path):
    from localserve.llamacpp.imatrix import compute_imatrix

    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    with pytest.raises(InputError, match="needs at least"):
        compute_imatrix(f16_gguf, short, tmp_path / "imatrix.gguf")
    assert not (tmp_path / "imatrix.gguf").exists()


def test_a_failing_tool_names_itself_its_command_and_its_stderr(tmp_path):
    from localserve.llamacpp.tools import run_tool

    missing = tmp_path / "missing.gguf"
    with pytest.raises(ToolError) as e:
        run_tool("llama-quantize", [missing, tmp_path / "out.gguf", "Q4_K_M"])
    text = str(e.value)
    assert text.startswith("llama-quantize: `") and str(missing) in text and "exited with code" in text
    assert e.value.stderr_tail.strip()


def test_cli_imatrix_data_shows_each_quant_with_and_without_it(f16_gguf, quants, corpus_parts, tmp_path):
    import shutil

    from localserve.cli import cli

    q4 = shutil.copy(quants["Q4_K_M"], tmp_path / "m-Q4_K_M.gguf")
    result = CliRunner().invoke(cli, ["--quiet", "quality", str(q4), "--reference", str(f16_gguf),
                                      "--imatrix-data", str(corpus_parts[1]), "--text", str(corpus_parts[0]),
                                      "--max-tokens", "300", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["label"]: r for r in json.loads(result.output)["rows"]}
    assert set(rows) == {"Q4_K_M", "Q4_K_M+imatrix"}
    assert rows["Q4_K_M+imatrix"]["file"] == "m-Q4_K_M-imatrix.gguf"
    assert rows["Q4_K_M+imatrix"]["kl_mean"] != rows["Q4_K_M"]["kl_mean"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "imatrix.gguf", "m-Q4_K_M-imatrix.gguf", "m-Q4_K_M.gguf", "quality.png"]


def test_imatrix_variants_need_quantized_inputs(f16_gguf, corpus_parts, tmp_path):
    from localserve.quality.variants import with_imatrix

    with pytest.raises(InputError, match="none of the GGUFs is a quant"):
        with_imatrix([f16_gguf], f16_gguf, corpus_parts[1], tmp_path)
