"""The smoke check fails loudly when a model says nothing or never stops (real llama.cpp runs)."""

from __future__ import annotations

import json
import shutil

import pytest

from localserve import ExportSpec, export
from localserve.errors import SmokeTestFailed
from localserve.llamacpp.convert import convert_hf_to_gguf
from localserve.llamacpp.smoke import smoke_test


@pytest.fixture(scope="module")
def silent_base(tiny_base, tmp_path_factory):
    from tinymodel import build_forced

    return build_forced(tiny_base, tmp_path_factory.mktemp("silent") / "base", "<|im_end|>")


@pytest.fixture(scope="module")
def rambling_gguf(tiny_base, tmp_path_factory):
    from tinymodel import build_forced

    tmp = tmp_path_factory.mktemp("ramble")
    base = build_forced(tiny_base, tmp / "base", "fox")
    return convert_hf_to_gguf(base, tmp / "ramble-F16.gguf")


def test_a_model_that_never_stops_fails_the_smoke_check(rambling_gguf):
    with pytest.raises(SmokeTestFailed, match="did not stop within 24 tokens"):
        smoke_test(rambling_gguf, max_tokens=24)


def test_a_model_that_says_nothing_fails_the_smoke_check(silent_base, tmp_path):
    gguf = convert_hf_to_gguf(silent_base, tmp_path / "silent-F16.gguf")
    with pytest.raises(SmokeTestFailed, match="produced no text"):
        smoke_test(gguf, max_tokens=24)


def test_export_refuses_to_describe_a_model_that_fails_its_smoke_check(silent_base, tiny_adapter, tmp_path):
    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_adapter, adapter)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(silent_base)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    with pytest.raises(SmokeTestFailed):
        export(ExportSpec(adapter=adapter, quants=("Q8_0",), out=tmp_path / "out", register=False))
    assert not (tmp_path / "out" / "localserve.json").exists(), "a failed export must not look complete"
