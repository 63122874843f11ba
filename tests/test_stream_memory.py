"""The streamed merge's memory follows the largest tensor, not the model: merging an adapter inside
llama.cpp's converter costs a few tensors over what the converter itself holds, while merging with
peft first holds the whole model in fp32 (measured in child processes, on a synthetic 0.4 GB Llama)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

pytestmark = pytest.mark.slow


def test_the_stream_adds_a_few_tensors_to_the_converters_memory_and_peft_a_whole_model(tmp_path):
    from measure import run_measured
    from synthetic_llama import SHAPES, base_tensors, write_adapter, write_base

    from localserve.llamacpp.vendor import locate
    from localserve.models.merge import merged_model_view, plan_merge
    from localserve.models.resolve import BaseModel, load_adapter

    base = write_base(tmp_path / "base", "test-400mb")
    adapter = write_adapter(tmp_path / "adapter", base, "test-400mb")
    largest_fp32 = max(4 * n for n in (_count(s) for _, s in base_tensors(SHAPES["test-400mb"])))
    model_fp32 = sum(4 * _count(s) for _, s in base_tensors(SHAPES["test-400mb"]))

    tree = locate()
    env = tree.python_env()
    plain = run_measured([sys.executable, str(tree.convert_hf), str(base), "--outfile", str(tmp_path / "plain.gguf"),
                          "--outtype", "f16"], env=env)
    model = BaseModel(base, "--base", None)
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(plan_merge([load_adapter(adapter)], model).to_json()))
    view = merged_model_view([load_adapter(adapter)], model, tmp_path / "merged")
    streamed = run_measured([sys.executable, "-m", "localserve.llamacpp.merged_convert", str(view), "--outfile",
                             str(tmp_path / "stream.gguf"), "--outtype", "f16", "--plan", str(plan)], env=env)
    peft = run_measured([sys.executable, "-c", "import sys; from pathlib import Path; "
                         "from localserve.models.merge import merge_adapter; "
                         "from localserve.models.resolve import BaseModel, load_adapter; "
                         "merge_adapter(load_adapter(Path(sys.argv[1])), BaseModel(Path(sys.argv[2]), '--base', None), "
                         "Path(sys.argv[3]))", str(adapter), str(base), str(tmp_path / "peft")], env=env)

    extra = streamed.peak_rss - plain.peak_rss
    print(f"peak RSS: converter {plain.peak_rss / 1e6:.0f} MB, with the stream {streamed.peak_rss / 1e6:.0f} MB, "
          f"peft's merge {peft.peak_rss / 1e6:.0f} MB; largest tensor {largest_fp32 / 1e6:.0f} MB in fp32")
    assert extra < 4 * largest_fp32, (f"the stream held {extra / 1e6:.0f} MB more than the converter alone; "
                                      f"the largest tensor is {largest_fp32 / 1e6:.0f} MB in fp32")
    # what the stream replaces: peft's merge alone holds the whole model in fp32
    assert peft.peak_rss - plain.peak_rss > model_fp32 / 2 > 4 * largest_fp32, (peft.peak_rss, model_fp32)


def _count(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
