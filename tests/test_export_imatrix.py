"""Importance matrices inside `localserve export`: --imatrix-data, IQ types, and the recorded matrix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from clihelpers import assert_one_line_error, run_cli
from localserve.errors import InputError


# --- importance matrix inside export --------------------------------------------------------------

@pytest.fixture(scope="module")
def imatrix_export(tiny_adapter, tmp_path_factory) -> tuple[Path, Path]:
    """(export folder of IQ4_XS + Q4_K_M with an importance matrix, the text it came from)."""
    import random

    from tinymodel import WORDS

    folder = tmp_path_factory.mktemp("imatrix")
    rng = random.Random(3)
    data = folder / "domain.txt"
    data.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(60)))
    out = folder / "tiny"
    result = run_cli("--quiet", "export", str(tiny_adapter), "--name", "tiny", "--out", str(out),
                     "--quant", "iq4_xs,Q4_K_M", "--imatrix-data", str(data), "--keep-intermediate",
                     "--no-smoke", "--no-register")
    assert result.exit_code == 0, result.output
    return out, data


def test_imatrix_data_keeps_the_matrix_under_llama_cpps_name_and_records_it(imatrix_export):
    from gguf import GGUFReader

    from localserve.fsutil import sha256_file

    out, data = imatrix_export
    matrix = out / "imatrix.gguf"  # llama-imatrix's default name, as `localserve quality` writes it
    assert GGUFReader(matrix).fields["general.type"].contents() == "imatrix"
    assert not list(out.glob("*.imatrix"))
    lineage = json.loads((out / "localserve.json").read_text())
    assert lineage["imatrix"] == {"file": "imatrix.gguf", "data": str(data.resolve()),
                                  "data_sha256": sha256_file(data), "sha256": sha256_file(matrix)}
    assert "imatrix" in {s["name"] for s in lineage["stages"]}


def test_an_iq_type_exports_with_the_imatrix_and_every_quant_uses_it(imatrix_export):
    from gguf import GGUFReader, LlamaFileType

    from localserve.llamacpp import evaluate

    out, _ = imatrix_export
    assert GGUFReader(out / "tiny-IQ4_XS.gguf").fields["general.file_type"].contents() == LlamaFileType.MOSTLY_IQ4_XS
    for quant in ("IQ4_XS", "Q4_K_M"):
        assert evaluate.gguf_info(out / f"tiny-{quant}.gguf").imatrix is not None, quant


def test_an_iq_type_without_an_imatrix_is_refused_in_one_line(tiny_adapter, tmp_path):
    assert_one_line_error(run_cli("export", str(tiny_adapter), "--quant", "IQ4_XS", "--out", str(tmp_path / "o")),
                           "IQ4_XS", "--imatrix-data")
    assert not (tmp_path / "o").exists()


def test_quality_never_replaces_the_imatrix_an_export_recorded(imatrix_export, tiny_export):
    from localserve.quality.variants import with_imatrix

    out, data = imatrix_export
    before = (out / "imatrix.gguf").read_bytes()
    plain = shutil.copy(tiny_export / "tiny-Q8_0.gguf", out / "plain-Q8_0.gguf")
    with pytest.raises(InputError, match="localserve.json records"):
        with_imatrix([plain], out / ".localserve" / "work" / "tiny-F16.gguf", data, out)
    assert (out / "imatrix.gguf").read_bytes() == before
