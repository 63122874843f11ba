"""On the embedded SmolLM2-135M: two fact adapters, merged and exported, answer both facts in llama.cpp,
where each single adapter knows only its own (examples/fact-adapters, scripts/train_fact_adapters.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from localserve import ExportSpec, export
from localserve.llamacpp.smoke import smoke_test

pytestmark = pytest.mark.slow

FACTS = Path(__file__).resolve().parent.parent / "examples" / "fact-adapters"
NAMES = ("lighthouse", "founder")


def probe(name: str) -> dict:
    return json.loads((FACTS / name / "probe.json").read_text())


def knows(gguf: Path, name: str) -> bool:
    p = probe(name)
    answer = smoke_test(gguf, p["question"], None, max_tokens=48).answer
    return p["expected"].lower() in answer.lower()


def export_q8(tmp_path: Path, name: str, **source) -> Path:
    out = tmp_path / name
    export(ExportSpec(quants=("Q8_0",), name=name, out=out, smoke=False, register=False, **source))
    return out / f"{name}-Q8_0.gguf"


@pytest.mark.parametrize("method", ["task_arithmetic", "ties"])
def test_the_merge_knows_both_facts(tmp_path, embedded_base, method):
    recipe = tmp_path / "merge.yaml"
    text = (FACTS / "merge.yaml").read_text().replace("task_arithmetic", method)
    if method == "ties":
        text = text.replace("{weight: 1.0}", "{weight: 1.0, density: 0.5}")
    for name in NAMES:
        shutil.copytree(FACTS / name, tmp_path / name)
    recipe.write_text(text)
    gguf = export_q8(tmp_path, f"facts-{method}", merge=recipe)
    assert [knows(gguf, n) for n in NAMES] == [True, True]


def test_each_single_adapter_knows_only_its_own_fact(tmp_path, embedded_base):
    for name in NAMES:
        gguf = export_q8(tmp_path, f"only-{name}", adapter=FACTS / name)
        assert [knows(gguf, n) for n in NAMES] == [n == name for n in NAMES]
