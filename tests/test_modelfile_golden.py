"""Golden Modelfiles, one per chat family, reviewed in diffs (tests/golden/modelfiles/).

Regenerate after an intended change with LOCALSERVE_UPDATE_GOLDEN=1 and review the diff.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from localserve.chat import resolve_chat
from localserve.modelfile import (OLLAMA_TEMPLATE_MODES, ModelfileSpec, parse_modelfile, render_modelfile,
                                  with_ollama_template)

DATA = Path(__file__).parent / "data" / "chat_templates"
GOLDEN = Path(__file__).parent / "golden" / "modelfiles"
INDEX = json.loads((DATA / "index.json").read_text())
# one published template per family
MODELS = {info["family"]: name for name, info in sorted(INDEX.items(), reverse=True)}


def _spec(model: str) -> ModelfileSpec:
    setup = resolve_chat(DATA / model)
    return ModelfileSpec(from_=f"./{model}-Q4_K_M.gguf", template=setup.template, system=setup.system,
                         parameters={"stop": list(setup.stop), **setup.parameters})


@pytest.mark.parametrize("family", sorted(MODELS))
def test_golden_modelfile(family):
    spec = _spec(MODELS[family])
    text = render_modelfile(spec, header=f"{family} chat family, from {MODELS[family]}'s published template")
    path = GOLDEN / f"{family}.Modelfile"
    if os.environ.get("LOCALSERVE_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="")
    assert path.read_text(encoding="utf-8") == text
    # The TEMPLATE survives Ollama's grammar byte for byte.
    assert parse_modelfile(text) == spec


def test_native_mode_omits_the_template_and_go_mode_keeps_it():
    spec = _spec(MODELS["chatml"])
    assert with_ollama_template(spec, spec.template, "native").template is None
    assert "TEMPLATE" not in render_modelfile(with_ollama_template(spec, spec.template, "native"))
    assert with_ollama_template(spec, spec.template, "go") == spec
    assert "0.30" in OLLAMA_TEMPLATE_MODES["native"]
