"""`export`: LoRA adapter (or merge recipe) -> merged -> 16-bit GGUF -> quantized GGUF(s), checked,
described, registered.

    ExportSpec -> source (adapter on its base | recipe) -> chat template parity -> merge -> convert
               -> [imatrix] -> quantize -> [quality gate] -> smoke -> Modelfile
               -> localserve.json (the ExportRecord, written last) -> [bundle] -> [register with Ollama]

Each heavy stage is declared to `Pipeline`, keyed by the content of its inputs, so a re-run with the
same inputs skips finished work, and an interrupted run leaves nothing that looks complete: every
artifact is renamed into place whole, and `localserve.json` is written last.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import LocalserveError, QualityBoundNotMet
from ..fsutil import atomic_path, folder_lock, human_bytes, sha256_file, write_text
from ..lineage import Artifact, BaseRecord, ExportRecord, ImatrixRecord, now, tool_versions, write_record
from ..llamacpp import convert, quantize as quant
from ..llamacpp.imatrix import IMATRIX_FILE
from ..llamacpp.smoke import smoke_test
from ..llamacpp.vendor import locate
from ..models.resolve import read_json
from ..pipeline import Pipeline, content_key
from ..progress import step
from .checks import chat_template_record, check_chat, check_out, require_export_space
from .inputs import MergeSource, merge_source
from .spec import QUALITY_GATE_TOKENS, ExportSpec

# Candidates for --quant auto, smallest first: the K-quants llama.cpp recommends for general use.
AUTO_CANDIDATES = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
IMATRIX_CANDIDATES = ("IQ4_XS", "IQ3_M")  # with an importance matrix
# F32 and BF16 keep more than the F16 intermediate holds (F32's precision, BF16's range): the
# converter writes them from the merged model, not from the F16 file.
CONVERTER_TYPES = {"F32": "f32", "BF16": "bf16"}


@dataclass
class ExportResult:
    out_dir: Path
    name: str
    artifacts: list[Artifact]
    lineage_path: Path
    modelfile_path: Path
    record: ExportRecord
    registered: dict | None = None
    register_hint: str | None = None
    stages: list[dict] = field(default_factory=list)
    bundle: str | None = None
    version: str | None = None  # NAME:vN, once registered

    def to_json(self) -> dict:
        return {"out_dir": str(self.out_dir), "name": self.name, "lineage": str(self.lineage_path),
                "modelfile": str(self.modelfile_path), "artifacts": [a.to_json() for a in self.artifacts],
                "registered": self.registered, "register_hint": self.register_hint, "stages": self.stages,
                "bundle": self.bundle, "version": self.version}


class _Stages:
    """The export's stages, declared to the pipeline with what each reads."""

    def __init__(self, spec: ExportSpec, source: MergeSource, pipe: Pipeline, versions: dict):
        self.spec, self.source, self.pipe = spec, source, pipe
        self.tree = locate()
        out = spec.out_dir
        self.work = out / ".localserve" / "work"
        self.merged_dir = self.work / "merged"
        self.f16_path = self.work / f"{spec.name}-F16.gguf"
        self.imatrix_path = out / IMATRIX_FILE if spec.imatrix_data else None
        self.merge_key = source.merge_key(versions)
        # The merged folder is written only when something reads it: the converter (a merge recipe,
        # the peft engine) or the quality gate's reference. The stream merges inside the converter.
        self.from_merged = ("merge",) if source.converts_from_merged else ()
        pipe.stage("merge", self.merge_key, [self.merged_dir],
                   lambda: source.merge(self.merged_dir, spec.trust_remote_code), source.announce())

    def declare_conversion(self, chat_template: str | None) -> None:
        """The conversion and what follows it, once the chat check has said which chat template the
        GGUF gets: the model's own (None), or the one chosen for a model that has none."""
        spec, source, pipe = self.spec, self.source, self.pipe
        self.chat_template = chat_template
        chosen = () if chat_template is None else (chat_template,)  # keys of models with a template unchanged
        self.convert_key = content_key("convert", self.merge_key, self.tree.commit, "f16", *chosen)
        self.imatrix_key = (content_key("imatrix", self.convert_key, sha256_file(spec.imatrix_data))
                            if spec.imatrix_data else None)
        pipe.stage("convert", self.convert_key, [self.f16_path], self._convert,
                   "converting to a 16-bit GGUF (llama.cpp's converter" +
                   (")" if source.converts_from_merged else ", merging tensor by tensor)"), needs=self.from_merged)
        if self.imatrix_path is not None:
            pipe.stage("imatrix", self.imatrix_key, [self.imatrix_path], self._imatrix,
                       f"computing an importance matrix from {spec.imatrix_data} (llama-imatrix)", needs=("convert",))

    def merged(self) -> Path:
        self.pipe.need("merge")
        return self.merged_dir

    def quant_key(self, q: str) -> str:
        if q in CONVERTER_TYPES:
            chosen = () if self.chat_template is None else (self.chat_template,)
            return content_key("convert", self.merge_key, self.tree.commit, CONVERTER_TYPES[q], *chosen)
        return content_key("quantize", self.convert_key, q, self.imatrix_key)

    def declare_quant(self, q: str, target: Path) -> str:
        name = f"quantize:{q}"
        needs = self.from_merged if q in CONVERTER_TYPES else ("convert", "imatrix")
        self.pipe.stage(name, self.quant_key(q), [target], lambda: self._quantize(q, target), f"quantizing to {q}",
                        needs=needs)
        return name

    def _convert(self) -> dict:
        self.source.convert(self.f16_path, "f16", self.tree, self.merged_dir, self.work / "stream", self.chat_template)
        return {"size": self.f16_path.stat().st_size, "merge_engine": self.spec.merge_engine}

    def _imatrix(self) -> dict:
        from ..llamacpp.imatrix import compute_imatrix

        compute_imatrix(self.f16_path, self.spec.imatrix_data, self.imatrix_path)
        return {"data": str(self.spec.imatrix_data.resolve()), "sha256": sha256_file(self.imatrix_path)}

    def _quantize(self, q: str, target: Path) -> dict:
        if q == "F16":
            with atomic_path(target) as tmp:
                shutil.copyfile(self.f16_path, tmp)
        elif q in CONVERTER_TYPES:
            self.source.convert(target, CONVERTER_TYPES[q], self.tree, self.merged_dir, self.work / "stream",
                                self.chat_template)
        else:
            quant.quantize(self.f16_path, target, q, self.imatrix_path)
        return {"size": target.stat().st_size, "sha256": sha256_file(target)}


def export(spec: ExportSpec) -> ExportResult:
    """Run the whole export described by `spec`; see the module docstring for the stages. One run at a
    time writes an output folder: a second one is refused, naming the first."""
    check_out(spec.out_dir, [p for p in (spec.adapter, spec.base) if p is not None])
    with folder_lock(spec.out_dir, "localserve export"):
        return _export(spec)


def _export(spec: ExportSpec) -> ExportResult:
    from ..modelfile import parse_modelfile

    # --- resolve and check everything before writing anything -----------------------------
    source = merge_source(spec.adapter, spec.merge, spec.base, spec.allow_pickle, spec.merge_engine)
    if spec.adapter is not None and not spec.allow_stacked:
        from ..lifecycle.versions import check_not_stacked

        check_not_stacked(source.base.path, spec.adapter)
    config = read_json(source.base.path / "config.json")
    architecture = convert.check_architecture(config)
    step(source.describe())
    user_modelfile = (parse_modelfile(spec.modelfile.read_text(encoding="utf-8"), source=str(spec.modelfile),
                                      require_from=False) if spec.modelfile else None)

    out = spec.out_dir
    created_out = not out.exists()
    pipe = Pipeline(out)
    versions = tool_versions()
    stages = _Stages(spec, source, pipe, versions)
    chat_dir = source.chat_dir(stages.merged, out / ".localserve" / "chat")
    setup, parity = check_chat(chat_dir, spec.template_family, spec.template_file, spec.force)
    stages.declare_conversion(setup.chat_template)

    def final(q: str) -> Path:
        return out / f"{spec.name}-{q}.gguf"

    if spec.auto_quant:
        requested = AUTO_CANDIDATES + (IMATRIX_CANDIDATES if stages.imatrix_path else ())
        targets = {q: stages.work / "candidates" / f"{spec.name}-{q}.gguf" for q in requested}
    else:
        requested = spec.quants
        targets = {q: final(q) for q in requested}
    names = {q: stages.declare_quant(q, targets[q]) for q in requested}
    stale = [q for q in requested if not (final(q).exists() and pipe.is_fresh(names[q]))]
    if stale:
        try:
            require_export_space(out, source.base.path, config, tuple(stale),
                                 merged=source.converts_from_merged or spec.quality_gate,
                                 what=f"merging and quantizing to {', '.join(stale)}")
        except LocalserveError:
            if created_out and out.is_dir() and not any(out.rglob("*")):  # leave no empty output folder
                shutil.rmtree(out, ignore_errors=True)
            raise

    quality, over_size = None, {}
    for q in requested:
        pipe.need(names[q])
    if not spec.keep_intermediate and stages.f16_path.exists():  # every quant is written: the peak disk passes
        stages.f16_path.unlink()
        pipe.forget("convert")
    if spec.auto_quant:
        quality, chosen, over_size = _choose(spec, targets, stages.merged)
        step(f"--quant auto chose {chosen} from {', '.join(targets)}")
        with atomic_path(final(chosen)) as tmp:
            shutil.copyfile(targets[chosen], tmp)
        pipe.moved(names[chosen], final(chosen))
        quants: tuple[str, ...] = (chosen,)
    else:
        quants = spec.quants
        if spec.quality_gate:
            from ..quality import check_quant

            quality = _measure(spec, [final(q) for q in quants], stages.merged)
            for q in quants:
                check_quant(quality, final(q).name, spec.max_kl, spec.max_size)
    if quality is not None:
        quality.write_chart(out / "quality.png", title=f"{spec.name}: size against KL")

    if not spec.keep_intermediate and stages.work.exists():
        shutil.rmtree(stages.work)
        pipe.forget("merge", "convert")

    # --- smoke check each file --------------------------------------------------------------
    probe = source.probe
    artifacts: list[Artifact] = []
    for q in quants:
        target = final(q)
        facts = pipe.info(names[q])
        smoke = None
        if spec.smoke:
            pipe.stage(f"smoke:{q}", content_key("smoke", stages.quant_key(q), probe), [target],
                       lambda target=target: smoke_test(target, probe.get("question"), probe.get("expected")).to_json(),
                       f"smoke test of {target.name} in llama.cpp")
            smoke = pipe.need(f"smoke:{q}").info
            step(f"{target.name}: {smoke['answer']!r} ({smoke['tokens_per_second']} tokens/s, "
                 f"finish: {smoke['finish_reason']})")
        artifacts.append(Artifact(target.name, q, facts["size"], facts["sha256"], smoke))

    # --- Modelfile(s) and the record ------------------------------------------------------------
    modelfile = _write_modelfiles(spec, setup, user_modelfile, artifacts, out)
    record = ExportRecord(
        kind="gguf", name=spec.name, spec=spec.to_json(), localserve_version=versions["localserve"], created_at=now(),
        base=BaseRecord(ref=source.base.ref, path=str(source.base.path), source=source.base.source,
                        sha256=source.hashes()["base"], architecture=architecture),
        **source.record(),
        tools={**versions, "llama_cpp_commit": stages.tree.commit, "converter": str(stages.tree.convert_hf)},
        chat={"family": setup.family, "source": str(chat_dir), **chat_template_record(setup), "parity_ok": parity.ok,
              "forced": bool(spec.force and not parity.ok), "parity": parity.to_json()},
        modelfile=modelfile, artifacts=tuple(artifacts),
        imatrix=(ImatrixRecord(stages.imatrix_path.name, str(spec.imatrix_data.resolve()),
                               sha256_file(spec.imatrix_data), sha256_file(stages.imatrix_path))
                 if stages.imatrix_path else None),
        quality=({**quality.to_json(), "chart": "quality.png", "max_kl": spec.max_kl, "max_size": spec.max_size,
                  **({"chosen": quants[0], "over_size": over_size} if spec.auto_quant else {})}
                 if quality is not None else None),
        stages=tuple(r.to_json() for r in pipe.records),
        sections={"ollama_prompt": _ollama_prompt(modelfile["template"], final(quants[0]), parity.ok)})
    lineage_path = write_record(out, record)
    step(f"wrote {len(artifacts)} GGUF ({human_bytes(sum(a.size for a in artifacts))}), Modelfile and "
         f"{lineage_path.name} to {out}")

    result = ExportResult(out, spec.name, artifacts, lineage_path, out / "Modelfile", record,
                          stages=[r.to_json() for r in pipe.records])
    if spec.bundle is not None:
        from ..ollama.bundle import make_bundle

        step(f"writing the air-gapped bundle {spec.bundle}")
        result.bundle = str(make_bundle(out, spec.bundle, record).path)
    if spec.register:
        _register(result, spec)
    return result


def _write_modelfiles(spec: ExportSpec, setup, user_modelfile, artifacts: list[Artifact], out: Path) -> dict:
    """`Modelfile` for the first quant, `Modelfile.<QUANT>` for the others; returns the record's section."""
    from ..modelfile import ModelfileSpec, render_modelfile

    parameters = dict(setup.parameters)
    parameters["stop"] = list(setup.stop)
    # The template's own default system prompt (SmolLM2, Qwen2.5 insert one when the conversation
    # has none) must be Ollama's SYSTEM too, or Ollama's prompts lack what the model trained with.
    system, messages, licenses = spec.system or getattr(setup, "system", None), (), ()
    if user_modelfile is not None:
        parameters.update({k: v for k, v in user_modelfile.parameters.items() if k != "stop"})
        if "stop" in user_modelfile.parameters:
            parameters["stop"] = list(dict.fromkeys(parameters["stop"] + list(user_modelfile.parameters["stop"])))
        system = spec.system or user_modelfile.system or system
        messages, licenses = user_modelfile.messages, user_modelfile.license
    template = setup.template if spec.ollama_template == "go" else None
    if template is None:
        step("--ollama-template native: the Modelfile has no TEMPLATE; Ollama >= 0.30 applies the GGUF's own chat "
             "template unless its create recognises it as one of its built-in templates (then that one, unchecked), "
             "older servers would send prompts unformatted (registration refuses them)")
    for i, art in enumerate(artifacts):
        mf = ModelfileSpec(from_=f"./{art.file}", template=template, system=system, parameters=parameters,
                           messages=tuple(messages), license=tuple(licenses))
        write_text(out / "Modelfile" if i == 0 else out / f"Modelfile.{art.quant}", render_modelfile(mf))
    return {"path": "Modelfile", "template": template, "system": system, "parameters": parameters,
            "messages": [list(m) for m in messages], "license": list(licenses),
            "ollama_template": spec.ollama_template}


def _ollama_prompt(template: str | None, gguf: Path, parity_ok: bool) -> dict:
    """Which template Ollama >= 0.30 will build this export's prompts with, and what proves it
    (docs/ollama.md#template-selection); registration and `verify` say what the server really took."""
    from ..ollama.prompt_path import GO_TEMPLATE, expected_path, gguf_chat_template

    jinja = gguf_chat_template(gguf)
    path = expected_path(template, jinja)
    proof = ("the parity check (chat.parity): the TEMPLATE renders what the model's own template does"
             if path.path == GO_TEMPLATE and parity_ok else
             "the GGUF carries the model's own chat template, which llama-server renders" if jinja else None)
    return {**path.to_json(), "before_0_30": expected_path(template, jinja, version=(0, 29, 0)).path,
            "proof": proof}


def _measure(spec: ExportSpec, ggufs, merged):
    """The quality table of `ggufs` against the merged model (fp32, transformers), on --quality-data
    (chat .jsonl rendered through the chat template, or plain text) or else the shipped corpus."""
    from ..quality import measure

    reference = merged()
    data = spec.quality_data
    chat = data is not None and data.suffix.lower() == ".jsonl"
    table = measure(list(ggufs), reference=reference, text=None if chat else data,
                    data_jsonl=data if chat else None, max_tokens=QUALITY_GATE_TOKENS)
    step("quality against the merged model:\n" + table.format())
    return table


def _choose(spec: ExportSpec, candidates: dict[str, Path], merged):
    """--quant auto: measure the candidates within --max-size, keep what `choose_quant` picks.

    Returns (table, chosen quant, {candidate over --max-size: its size}); the latter are not measured.
    """
    from ..quality import choose_quant

    sizes = {q: p.stat().st_size for q, p in candidates.items()}
    over = {q: n for q, n in sizes.items() if spec.max_size is not None and n > spec.max_size}
    fitting = {q: p for q, p in candidates.items() if q not in over}
    if not fitting:
        listed = ", ".join(f"{q} {human_bytes(n)}" for q, n in sizes.items())
        raise QualityBoundNotMet(f"no candidate quant fits --max-size {human_bytes(spec.max_size)} ({listed})",
                                 "raise --max-size")
    if over:
        step(f"not measuring {', '.join(over)}: over --max-size {human_bytes(spec.max_size)}")
    table = _measure(spec, fitting.values(), merged)
    row = choose_quant(table, spec.max_kl, spec.max_size)
    return table, next(q for q, p in fitting.items() if p.name == row.file), over


def _register(result: ExportResult, spec: ExportSpec) -> None:
    """Register with Ollama when a server answers, as the next version NAME:vN (and NAME:<quant>);
    recorded in localserve.json and the version store. Otherwise say how to do it later."""
    from .. import ollama
    from ..lifecycle.places import ServerPlace
    from ..lifecycle.versions import register_version
    from ..lineage import read_record
    from ..ollama.client import resolve_host

    host = spec.ollama_host
    later = (f"register later with `localserve register {result.out_dir}` "
             f"or `ollama create {spec.name} -f {result.out_dir / 'Modelfile'}`")
    if not ollama.server_available(host):
        result.register_hint = f"no Ollama server answered at {resolve_host(host)}; {later}"
        return
    try:
        registration = register_version(result.out_dir, ServerPlace(host), record=result.record,
                                        data_file=spec.data)
    except LocalserveError as e:
        result.register_hint = f"registration failed: {e}; {later}"
        raise
    result.record = read_record(result.out_dir)
    result.registered = result.record.registered
    result.version = registration.version.ref
