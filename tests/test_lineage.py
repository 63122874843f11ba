"""The export record (localserve.json): one typed description, read back exactly as written, and
checked when it comes from elsewhere (a bundle, an older localserve, a hand-written file)."""

from __future__ import annotations

import json

import pytest

from localserve.errors import InputError, UnknownName
from localserve.lineage import (AdapterRecord, Artifact, BaseRecord, ExportRecord, ImatrixRecord, TenantRecord,
                                find_record, read_record, tool_versions, write_record)


def _gguf_record(**changes) -> ExportRecord:
    record = ExportRecord(
        kind="gguf", name="demo", spec={"quants": ["Q4_K_M"]}, created_at="2026-12-01T00:00:00+00:00",
        base=BaseRecord(path="/m/base", sha256="b" * 64, ref="org/base", source="path", architecture="LlamaForCausalLM"),
        adapters=(AdapterRecord(path="/m/adapter", sha256="a" * 64, lora_modules=7,
                                probe={"question": "q?", "expected": "x"}),),
        artifacts=(Artifact("demo-Q4_K_M.gguf", "Q4_K_M", 100, "c" * 64, {"answer": "x"}),),
        modelfile={"template": "{{ .Prompt }}", "parameters": {"stop": ["<|im_end|>"]}},
        imatrix=ImatrixRecord("imatrix.gguf", "/data.txt", "d" * 64, "e" * 64),
        tools=tool_versions(), stages=({"name": "merge", "key": "k"},))
    return record.replace(**changes)


def test_a_record_reads_back_equal_to_what_was_written(tmp_path):
    record = _gguf_record()
    path = write_record(tmp_path, record)
    assert path.name == "localserve.json"
    assert read_record(tmp_path) == record


@pytest.mark.parametrize("record", [
    ExportRecord(kind="tenants", name="t", base=BaseRecord(path="/b", gguf_architecture="llama"),
                 artifacts=(Artifact("base-Q8_0.gguf", "Q8_0", 1, "f" * 64),),
                 tenants=(TenantRecord("alpha", "alpha:q8_0", "/a", "1" * 64, "alpha-lora-F16.gguf", 10, "2" * 64,
                                       "Modelfile.alpha", 8, 16.0, 4),),
                 sections={"ollama_adapter_support": {"message": "ok"}}),
    ExportRecord(kind="vllm", name="v", adapters=(AdapterRecord(path="/a", sha256="1" * 64, name="tenant"),),
                 artifacts=(Artifact("model/model.safetensors", size=5, sha256="3" * 64),),
                 sections={"merged": False, "serve": {"options": {"port": 8000}}}),
], ids=["tenants", "vllm"])
def test_every_kind_round_trips(tmp_path, record):
    write_record(tmp_path, record)
    assert read_record(tmp_path) == record


def test_the_json_keeps_the_shape_readers_and_users_rely_on():
    data = _gguf_record().to_json()
    assert data["kind"] == "gguf" and data["adapter"]["sha256"] == "a" * 64 and "adapters" not in data
    assert data["artifacts"][0] == {"quant": "Q4_K_M", "file": "demo-Q4_K_M.gguf", "size": 100, "sha256": "c" * 64,
                                    "smoke": {"answer": "x"}}
    assert data["imatrix"]["file"] == "imatrix.gguf" and data["tools"]["python"]
    recipe = _gguf_record(adapters=(), merge={"method": "ties"}).to_json()
    assert recipe["adapter"] is None and recipe["merge"] == {"method": "ties"}


def test_records_of_earlier_versions_are_read_with_their_kind(tmp_path):
    for legacy, kind in [({"kind": "lora-tenants"}, "tenants"), ({"target": "vllm"}, "vllm"), ({}, "gguf"),
                         ({"source": {"ollama_store": "/s", "model": "m:v1"}}, "ollama-store")]:
        (tmp_path / "localserve.json").write_text(json.dumps({"name": "m", "artifacts": [], **legacy}))
        assert read_record(tmp_path).kind == kind


def test_keys_this_version_does_not_know_are_kept_on_rewrite(tmp_path):
    data = {**_gguf_record().to_json(), "from_the_future": {"x": 1}}
    (tmp_path / "localserve.json").write_text(json.dumps(data))
    record = read_record(tmp_path)
    write_record(tmp_path, record.replace(registered={"name": "demo:q4_k_m"}))
    again = json.loads((tmp_path / "localserve.json").read_text())
    assert again["from_the_future"] == {"x": 1} and again["registered"] == {"name": "demo:q4_k_m"}


@pytest.mark.parametrize("file", ["/etc/passwd", "../outside.gguf", "a/../../b.gguf", "C:\\x.gguf", ""])
def test_an_artifact_outside_the_folder_is_refused(tmp_path, file):
    (tmp_path / "localserve.json").write_text(json.dumps({"name": "m", "artifacts": [{"file": file}]}))
    with pytest.raises(InputError, match="relative path|no file name"):
        read_record(tmp_path)


@pytest.mark.parametrize("text, needle", [("[1, 2]", "not an object"), ("{", "not valid JSON"),
                                          ('{"artifacts": {"a": 1}}', "must be a list"),
                                          ('{"kind": "wheel"}', "unknown export kind"),
                                          ('{"base": {"path": "/b", "colour": "red"}, "kind": "gguf"}', None)])
def test_a_record_that_is_not_one_is_one_clear_error(tmp_path, text, needle):
    (tmp_path / "localserve.json").write_text(text)
    if needle is None:  # an unknown field inside a known section is ignored, not fatal
        assert read_record(tmp_path).base == BaseRecord(path="/b")
        return
    with pytest.raises(InputError, match=needle):
        read_record(tmp_path)


def test_a_folder_without_a_record_says_what_to_point_at(tmp_path):
    with pytest.raises(InputError, match="has no localserve.json"):
        read_record(tmp_path)


def test_find_record_serves_a_gguf_file_or_its_folder_and_tolerates_a_broken_one(tmp_path):
    write_record(tmp_path, _gguf_record())
    gguf = tmp_path / "demo-Q4_K_M.gguf"
    gguf.write_bytes(b"GGUF")
    assert find_record(gguf)[0] == tmp_path and find_record(tmp_path)[1].name == "demo"
    (tmp_path / "localserve.json").write_text("{")
    assert find_record(gguf) is None
    assert find_record(tmp_path / "elsewhere") is None


def test_artifact_lookup_by_quant_in_any_case_lists_the_valid_ones():
    record = _gguf_record()
    assert record.artifact("q4_k_m").file == "demo-Q4_K_M.gguf" and record.artifact().quant == "Q4_K_M"
    with pytest.raises(UnknownName, match="Q4_K_M"):
        record.artifact("Q8_0")
