"""Memory arithmetic, checked against the real embedded GGUF and llama.cpp's own accounting."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from localserve.errors import InputError, UnknownName
from localserve.models.embedded import DEFAULT_ID, EMBEDDED
from localserve.plan import PlanSpec, estimate, fit, kv_cache_bytes, load_model, plan, read_gguf
from localserve.plan.memory import MIB, Overhead
from localserve.plan.model import bytes_for
from localserve.plan.tables import load_devices

MiB = 1 << 20

# One subprocess loads the model once and opens three contexts; llama.cpp logs each context's
# KV cache on fd 2 ("llama_kv_cache: size = N MiB (C cells, L layers, s/S seqs), K (f16): ...").
_LLAMA_PROBE = r"""
import json, sys, llama_cpp
model_path, cases = sys.argv[1], json.loads(sys.argv[2])
model = llama_cpp.llama_model_load_from_file(model_path.encode(), llama_cpp.llama_model_default_params())
print(json.dumps({"model_size": llama_cpp.llama_model_size(model)}), flush=True)
for case in cases:
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = case["n_ctx"]
    params.n_seq_max = case["n_seq_max"]
    params.type_k = params.type_v = case["ggml_type"]
    params.flash_attn_type = 1  # a quantized V cache needs flash attention
    ctx = llama_cpp.llama_init_from_model(model, params)
    assert ctx, case
    llama_cpp.llama_free(ctx)
    sys.stderr.flush()
"""


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    return EMBEDDED[DEFAULT_ID].gguf_file()


@pytest.fixture(scope="module")
def llama_report(gguf_path):
    """What llama.cpp itself says: the model's tensor bytes, and one KV cache size per context."""
    cases = [{"n_ctx": 1024, "n_seq_max": 1, "ggml_type": 1, "ctx": 1024, "conc": 1, "cache": "f16"},
             {"n_ctx": 2048, "n_seq_max": 2, "ggml_type": 1, "ctx": 1024, "conc": 2, "cache": "f16"},
             {"n_ctx": 4096, "n_seq_max": 1, "ggml_type": 8, "ctx": 4096, "conc": 1, "cache": "q8_0"}]
    proc = subprocess.run([sys.executable, "-c", _LLAMA_PROBE, str(gguf_path), json.dumps(cases)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sizes = re.findall(r"llama_kv_cache: size =\s*([\d.]+) MiB \(\s*(\d+) cells,\s*(\d+) layers,\s*\d+/(\d+) seqs\)",
                       proc.stderr)
    assert len(sizes) == len(cases), proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[0])["model_size"], list(zip(cases, sizes))


def test_weight_bytes_of_a_gguf_equal_llama_cpps_own_tensor_size(gguf_path, llama_report):
    _, weights, _ = read_gguf(gguf_path)
    model_size, _ = llama_report
    assert weights.exact
    assert weights.total_bytes == model_size


def test_weight_bytes_fill_the_files_tensor_data_region(gguf_path):
    import gguf

    _, weights, _ = read_gguf(gguf_path)
    reader = gguf.GGUFReader(gguf_path)
    file_size = gguf_path.stat().st_size
    spans = sorted((t.data_offset, t.n_bytes) for t in reader.tensors)
    # tensors lie back to back from the data offset to the end of the file, each padded to the alignment
    gaps = [nxt[0] - (off + n) for (off, n), nxt in zip(spans, spans[1:])]
    gaps.append(file_size - (spans[-1][0] + spans[-1][1]))
    assert spans[0][0] == reader.data_offset
    assert all(0 <= g < reader.alignment for g in gaps)
    assert weights.total_bytes == file_size - reader.data_offset - sum(gaps)


def test_hyperparameters_come_from_the_gguf_metadata(gguf_path):
    shape, _, _ = read_gguf(gguf_path)
    # SmolLM2-135M uses grouped-query attention: fewer KV heads than attention heads
    assert shape.architecture == "llama"
    assert shape.n_kv_heads < shape.n_heads
    assert shape.key_length * shape.n_heads == shape.embedding_length


def test_kv_cache_formula_matches_llama_cpps_reported_size(gguf_path, llama_report):
    shape, _, _ = read_gguf(gguf_path)
    _, reports = llama_report
    for case, (mib, cells, layers, seqs) in reports:
        # llama.cpp gives each of n_seq_max sequences its own n_ctx / n_seq_max cells
        assert (int(cells), int(layers), int(seqs)) == (case["ctx"], shape.n_layers, case["conc"])
        ours = kv_cache_bytes(shape, case["ctx"], case["conc"], case["cache"])
        assert f"{ours / MiB:.2f}" == mib, case


def test_kv_cache_honours_gqa_and_cache_type(gguf_path):
    shape, _, _ = read_gguf(gguf_path)
    f16 = kv_cache_bytes(shape, 2048, 1, "f16")
    assert f16 == shape.n_layers * shape.n_kv_heads * shape.key_length * 2 * 2048 * 2
    assert kv_cache_bytes(shape, 2048, 3, "f16") == 3 * f16
    assert kv_cache_bytes(shape, 2048, 1, "q8_0") < f16 < kv_cache_bytes(shape, 2048, 1, "f32")
    assert kv_cache_bytes(shape, 2048, 1, "q4_0") < kv_cache_bytes(shape, 2048, 1, "q8_0")
    with pytest.raises(UnknownName, match="q8_0"):
        kv_cache_bytes(shape, 2048, 1, "q3")


def test_hf_config_estimate_counts_the_same_parameters_as_the_gguf(gguf_path, embedded_base):
    from_gguf = load_model(gguf_path).weights[0]
    from_config = load_model(embedded_base, ("Q8_0",)).weights[0]
    assert not from_config.exact
    assert from_config.n_params == from_gguf.n_params
    assert "Q8_0" in from_config.how
    # the config's tensor shapes (row lengths) price a K-quant exactly as the GGUF's own shapes do
    q4_from_config = load_model(embedded_base, ("Q4_K_M",)).weights[0]
    q4_from_gguf = load_model(gguf_path, ("Q4_K_M",)).weights[1]
    assert q4_from_config.total_bytes == q4_from_gguf.total_bytes


def test_other_quants_are_priced_with_ggml_block_sizes(gguf_path):
    model = load_model(gguf_path, ("Q8_0", "F16"))
    by_quant = {w.quant: w for w in model.weights}
    assert set(by_quant) == {"Q4_1", "Q8_0", "F16"}
    assert by_quant["Q4_1"].exact and not by_quant["Q8_0"].exact
    n_2d = sum(t.n for t in model.tensors if not t.one_d)
    n_1d = sum(t.n for t in model.tensors if t.one_d)
    assert by_quant["F16"].total_bytes == 2 * n_2d + 4 * n_1d
    assert by_quant["Q8_0"].total_bytes == sum(bytes_for(t.n, "F32" if t.one_d else "Q8_0") for t in model.tensors)


def test_rows_that_do_not_divide_into_k_quant_blocks_fall_back_as_in_llama_cpp(gguf_path):
    from localserve.plan.model import storage_type

    shape, _, tensors = read_gguf(gguf_path)
    assert shape.embedding_length % 256  # SmolLM2's 576-wide rows cannot hold 256-element K-quant blocks
    assert storage_type("Q4_K", shape.embedding_length) == "Q5_0"
    assert storage_type("Q4_K", 4096) == "Q4_K"
    q4km = load_model(gguf_path, ("Q4_K_M",)).weights[1]
    assert "stored as Q5_0" in q4km.how
    assert q4km.total_bytes == sum(bytes_for(t.n, "F32" if t.one_d else storage_type("Q4_K", t.row)) for t in tensors)


def test_fit_reports_partial_offload_on_a_small_gpu(gguf_path, tmp_path, monkeypatch):
    shape, weights, _ = read_gguf(gguf_path)
    est = estimate(shape, weights, ctx=1024, concurrency=1, overhead=Overhead(fixed_bytes=8 * MIB, fraction=0.0))
    per_layer = weights.layer_bytes[0] + est.kv_layer_bytes
    room = 8 * MIB + 10 * per_layer + per_layer // 2  # room for ten layers and a half
    table = tmp_path / "devices.json"
    table.write_text(json.dumps({"devices": [
        {"name": "tiny-gpu", "kind": "gpu", "memory_gib": room / (1 << 30), "date": "2026-11-28", "source": "test"},
        {"name": "tiny-cpu", "kind": "cpu", "memory_gib": room / (1 << 30), "date": "2026-11-28", "source": "test"},
        {"name": "big-gpu", "kind": "gpu", "memory_gib": 1, "date": "2026-11-28", "source": "test"}]}))
    devices = load_devices(table)
    assert "A100-80GB" in devices  # the shipped table is extended, not replaced
    assert len(set(weights.layer_bytes)) == 1
    partial = fit(est, devices["tiny-gpu"])
    assert (partial.status, partial.layers_on_device) == ("partial", 10)
    assert fit(est, devices["tiny-cpu"]).status == "no"  # no offload without a discrete GPU
    assert fit(est, devices["big-gpu"]).status == "fits"


def test_plan_lists_every_quant_with_devices_and_the_table_date(gguf_path):
    result = plan(PlanSpec(gguf_path, quants=("Q8_0",), ctx=2048, concurrency=2, devices=("T4", "CPU-8GB")))
    data = result.to_json()
    assert [q["quant"] for q in data["quants"]] == ["Q4_1", "Q8_0"]
    q = data["quants"][0]
    assert q["total_bytes"] == q["weights_bytes"] + q["kv_cache_bytes"] + q["overhead_bytes"]
    assert {d["device"] for d in q["devices"]} == {"T4", "CPU-8GB"}
    assert all(d["date"] and d["source"] for d in q["devices"])
    assert data["device_table_dates"] == ["2026-11-28"]


def test_plan_refuses_bad_input(gguf_path):
    with pytest.raises(InputError, match="--ctx"):
        PlanSpec(gguf_path, ctx=0)
    with pytest.raises(UnknownName, match="Q4_K_M"):
        plan(PlanSpec(gguf_path, quants=("Q4_K_Z",)))
    with pytest.raises(UnknownName, match="unknown device 'TPU-9'"):
        plan(PlanSpec(gguf_path, devices=("TPU-9",)))


@pytest.mark.slow
def test_plan_of_an_export_folder_is_exact_per_artifact_and_estimates_are_lower_bounds(exported_demo):
    from localserve.plan.model import _estimate

    meta = json.loads((exported_demo / "localserve.json").read_text())
    model = load_model(exported_demo)
    by_quant = {w.quant: w for w in model.weights}
    for artifact in meta["artifacts"]:
        weights = by_quant[artifact["quant"]]
        assert weights.exact and weights.file == artifact["file"]
        assert weights.total_bytes < (exported_demo / artifact["file"]).stat().st_size
    # a K-quant mix keeps some tensors at a higher type (and rows not divisible by 256 fall back to
    # larger legacy types), so the base type's estimate is a lower bound, as the plan says
    estimate_q4 = _estimate("Q4_K_M", model.tensors, "test")
    assert estimate_q4.n_params == by_quant["F16"].n_params
    assert estimate_q4.total_bytes <= by_quant["Q4_K_M"].total_bytes
    assert "the real file is larger" in estimate_q4.how
    # F16 has no mix: the estimate from element counts is the file's exact tensor size
    assert _estimate("F16", model.tensors, "test").total_bytes == by_quant["F16"].total_bytes


@pytest.mark.parametrize("args, needle", [
    (["--device", "TPU-9"], "unknown device 'TPU-9'"),
    (["--ctx", "-1"], "--ctx must be positive"),
    (["--kv-cache-type", "q3"], "unknown KV cache type 'q3'"),
])
def test_plan_cli_bad_input_is_one_clear_line(gguf_path, args, needle):
    from click.testing import CliRunner

    from localserve.cli import cli

    result = CliRunner().invoke(cli, ["plan", str(gguf_path), *args])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_plan_of_an_export_folder_shows_the_quality_gates_measurements(gguf_path, tmp_path):
    from click.testing import CliRunner

    from localserve.cli import cli

    folder = tmp_path / "demo"
    folder.mkdir()
    (folder / "demo-Q4_1.gguf").symlink_to(gguf_path)
    row = {"file": "demo-Q4_1.gguf", "quant": "Q4_1", "kl_mean": 0.0123, "top1": 0.9512, "ppl_ratio": 1.031}
    (folder / "localserve.json").write_text(json.dumps(
        {"name": "demo", "artifacts": [{"quant": "Q4_1", "file": "demo-Q4_1.gguf"}], "quality": {"rows": [row]}}))
    result = CliRunner().invoke(cli, ["plan", str(folder), "--ctx", "1024", "--device", "T4"])
    assert result.exit_code == 0, result.output
    assert "Q4_1 (exact)" in result.output
    assert "mean KL 0.0123 nats, top-1 agreement 95.1%, perplexity x1.031" in result.output
    data = json.loads(CliRunner().invoke(cli, ["plan", str(folder), "--device", "T4", "--json"]).output)
    assert data["quants"][0]["quality"] == row
