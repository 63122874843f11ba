"""`export` refuses a chat template that does not match, before doing any work."""

from __future__ import annotations

import shutil

import pytest

from localserve import ExportSpec, export
from localserve.errors import TemplateMismatch

pytestmark = [pytest.mark.go, pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed")]


def test_export_refuses_a_template_family_that_does_not_reproduce_the_model_template(demo_adapter, embedded_base,
                                                                                    tmp_path):
    out = tmp_path / "out"
    with pytest.raises(TemplateMismatch) as err:
        export(ExportSpec(adapter=demo_adapter, template_family="phi3", out=out, name="demo", register=False))
    text = str(err.value)
    assert "phi3" in text and "--force" in text and "+++ Ollama Go TEMPLATE" in text
    assert not out.exists() or not list(out.glob("*.gguf"))


def test_export_refuses_a_template_file_that_does_not_match(demo_adapter, embedded_base, tmp_path):
    wrong = tmp_path / "wrong.gotmpl"
    wrong.write_text("{{ range .Messages }}{{ .Role }}: {{ .Content }}\n{{ end }}assistant:", encoding="utf-8")
    with pytest.raises(TemplateMismatch, match="custom"):
        export(ExportSpec(adapter=demo_adapter, template_file=wrong, out=tmp_path / "out", name="demo",
                          register=False))
