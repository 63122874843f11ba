"""Golden vLLM serve files and every --deploy engine's files (tests/golden/vllm/CASE/deploy/), reviewed in
diffs: one GPU merged, the same with its serving features changed, one GPU with LoRA tenants, and two
nodes on Ray. Regenerate after an intended change with LOCALSERVE_UPDATE_GOLDEN=1 and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from localserve.vllm import ServeConfig, deploy, render

GOLDEN = Path(__file__).parent / "golden" / "vllm"
NGRAM = (("method", "ngram"), ("num_speculative_tokens", 5), ("prompt_lookup_min", 2), ("prompt_lookup_max", 4))
LORA = dict(lora_modules=(("support", "./adapters/support"), ("legal", "./adapters/legal")), max_lora_rank=16,
            max_loras=2, max_cpu_loras=2)
CONFIGS = {
    "merged": ServeConfig(name="demo"),
    # the serving features away from their defaults: no prefix caching, ngram speculation, xgrammar
    "features": ServeConfig(name="demo", prefix_caching=False, speculative=NGRAM, structured_output_backend="xgrammar"),
    "lora": ServeConfig(name="smol", max_model_len=8192, max_num_seqs=16, **LORA),
    "ray": ServeConfig(name="big", max_model_len=32768, max_num_seqs=64, tensor_parallel_size=8,
                       pipeline_parallel_size=2, nodes=2, gpus_per_node=8,
                       arithmetic=("TP=8 x PP=2 = 16 GPU(s); a stage holds up to 40 of 80 layers",), **LORA),
}


@pytest.mark.parametrize("case", sorted(CONFIGS))
def test_golden_serve_files(case):
    # sizes as a 3 GiB model would give them; adapters from the cloud prefix Ray Serve LLM reads
    deployment = deploy.Deployment(CONFIGS[case], 3 << 30, 4 << 30, "s3://models/adapters")
    files = {**render(CONFIGS[case], deployment), **deploy.render(tuple(deploy.ENGINES), deployment)}
    folder = GOLDEN / case
    if os.environ.get("LOCALSERVE_UPDATE_GOLDEN"):
        for name, text in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text, encoding="utf-8", newline="")
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == sorted(files)
    for name, text in files.items():
        assert (folder / name).read_text(encoding="utf-8") == text, name
