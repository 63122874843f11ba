"""`export`: LoRA adapter -> merged -> 16-bit GGUF -> quantized GGUF(s), checked, described, registered.

    ExportSpec -> resolve -> check template -> merge -> convert -> quantize -> smoke -> Modelfile
               -> localserve.json (lineage) -> register with Ollama if one answers

Each heavy stage runs under `Pipeline`, keyed by the content of its inputs, so a re-run with the
same inputs skips finished work, and an interrupted run leaves nothing that looks complete:
every artifact is renamed into place whole, and `localserve.json` is written last.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from .errors import InputError, LocalserveError
from .fsutil import atomic_dir, atomic_path, human_bytes, require_free_space, sha256_file, sha256_tree, write_json, write_text
from .llamacpp import convert, quantize as quant
from .llamacpp.imatrix import IMATRIX_FILE
from .llamacpp.smoke import SmokeResult, smoke_test
from .llamacpp.vendor import locate
from .models.merge import merge_adapter, saved_dtype
from .models.resolve import BaseModel, check_base_weights, load_adapter, read_json, resolve_base
from .pipeline import Pipeline, content_key
from .progress import step
from .spec import ExportSpec

LINEAGE_FILE = "localserve.json"
# Candidates for --quant auto, smallest first: the K-quants llama.cpp recommends for general use.
AUTO_CANDIDATES = ("Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
EXPORT_QUALITY_TOKENS = 2048
_BYTES_PER_WEIGHT = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass
class Artifact:
    quant: str
    file: str
    size: int
    sha256: str
    smoke: dict | None = None

    def to_json(self) -> dict:
        return {"quant": self.quant, "file": self.file, "size": self.size, "sha256": self.sha256,
                **({"smoke": self.smoke} if self.smoke else {})}


@dataclass
class ExportResult:
    out_dir: Path
    name: str
    artifacts: list[Artifact]
    lineage_path: Path
    modelfile_path: Path
    registered: dict | None = None
    register_hint: str | None = None
    stages: list[dict] = field(default_factory=list)
    bundle: str | None = None

    def to_json(self) -> dict:
        return {"out_dir": str(self.out_dir), "name": self.name, "lineage": str(self.lineage_path),
                "modelfile": str(self.modelfile_path), "artifacts": [a.to_json() for a in self.artifacts],
                "registered": self.registered, "register_hint": self.register_hint, "stages": self.stages,
                "bundle": self.bundle}


def tool_versions() -> dict:
    versions = {}
    for pkg in ("localserve", "torch", "transformers", "peft", "safetensors", "gguf", "llama-cpp-python", "mergekit"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return versions


def _chat_source(adapter_dir: Path, base_dir: Path) -> Path:
    """The folder whose tokenizer and chat template the merged model gets (see merge.TOKENIZER_FILES)."""
    for name in ("chat_template.jinja", "tokenizer_config.json", "tokenizer.json"):
        if (adapter_dir / name).is_file():
            return adapter_dir
    return base_dir


def _check_chat(spec: ExportSpec, chat_dir: Path):
    """The chat setup for `chat_dir`, and its parity with the model's own template (refused unless --force)."""
    from . import chat as chat_mod
    from .chat.parity import check_parity

    setup = chat_mod.resolve_chat(chat_dir, family=spec.template_family, template_file=spec.template_file)
    step(f"chat template family: {setup.family}; stops: {list(setup.stop)}")
    parity = check_parity(chat_dir, setup)
    if not parity.ok:
        if not spec.force:
            from .errors import TemplateMismatch

            raise TemplateMismatch(
                f"the Ollama TEMPLATE for family {setup.family} does not reproduce {chat_dir}'s chat template:\n"
                + parity.summary(),
                "choose another --template-family or pass --template-file; --force exports anyway")
        step("template parity FAILED; exporting anyway because of --force (recorded in localserve.json)")
    return setup, parity


def _merge_base(recipe) -> BaseModel:
    """--merge: the model whose config the merged model gets (mergekit's donor; a LoRA donor's base)."""
    donor = recipe.donor
    return BaseModel(donor.base if donor.is_lora else donor.path, "merge recipe", None)


def _copy_chat_files(merged_dir: Path, chat_dir: Path) -> None:
    """Keep the merged model's tokenizer and template beside the output: the merged folder is temporary."""
    from .models.merge import TOKENIZER_FILES

    with atomic_dir(chat_dir) as tmp:
        for name in TOKENIZER_FILES + ("config.json", "generation_config.json"):
            if (merged_dir / name).is_file():
                shutil.copyfile(merged_dir / name, tmp / name)


CONVERTER_TYPES = {"F32": "f32", "BF16": "bf16"}  # written by the converter from the merged model


def _estimate_bytes(base_dir: Path, config: dict, quants: tuple[str, ...], keep_intermediate: bool) -> int:
    """Free disk the run needs at its peak: merged folder + F16 GGUF + every quant."""
    weights = sum(p.stat().st_size for p in base_dir.glob("*.safetensors"))
    n_params = weights / _BYTES_PER_WEIGHT.get(saved_dtype(config), 4)
    merged = n_params * _BYTES_PER_WEIGHT[saved_dtype(config)]
    f16 = n_params * 2
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    total = merged + f16
    for q in quants:
        base_type = q.rsplit("_", 1)[0] if q.endswith(("_S", "_M", "_L", "_XS", "_XXS")) else q
        qt = getattr(GGMLQuantizationType, base_type, None) or getattr(GGMLQuantizationType, q, None)
        if qt is None:
            bpw = 16.0
        else:
            block, size = GGML_QUANT_SIZES[qt]
            bpw = size * 8 / block
        total += n_params * (bpw + 0.5) / 8  # +0.5 bpw: mixes keep some tensors at higher precision
    return int(total * 1.05)


def export(spec: ExportSpec) -> ExportResult:
    """Run the whole export described by `spec`; see the module docstring for the stages."""
    from .modelfile import ModelfileSpec, parse_modelfile, render_modelfile

    # --- resolve and check everything before writing anything -----------------------------
    recipe = None  # --merge: a mergekit recipe replaces the adapter; see _merge_base and ensure_merged
    if spec.merge is not None:
        from .merging import load_recipe

        recipe = load_recipe(spec.merge)
        adapter, base = None, _merge_base(recipe)
    else:
        adapter = load_adapter(spec.adapter, spec.allow_pickle)
        base = resolve_base(adapter, spec.base)
    check_base_weights(base, spec.allow_pickle)
    config = read_json(base.path / "config.json")
    architecture = convert.check_architecture(config)
    from .models.merge import check_compatibility

    if recipe is None:
        n_lora_modules = check_compatibility(adapter, base)
        step(f"base: {base.path} ({base.source}); adapter: {adapter.path} ({n_lora_modules} LoRA modules)")
        chat_dir = _chat_source(adapter.path, base.path)
        setup, parity = _check_chat(spec, chat_dir)
    else:
        n_lora_modules = 0
        step(f"merge recipe: {spec.merge} ({recipe.method}, {len(recipe.inputs)} inputs); config from {base.path}")
    user_modelfile = (parse_modelfile(spec.modelfile.read_text(encoding="utf-8"), source=str(spec.modelfile),
                                      require_from=False) if spec.modelfile else None)

    out = spec.out_dir
    created_out = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".localserve" / "work"
    pipe = Pipeline(out)
    tree = locate()
    versions = tool_versions()
    if recipe is None:
        inputs = {"base": sha256_tree(base.path), "adapter": sha256_tree(adapter.path)}
        merge_key = content_key("merge", inputs, versions["transformers"], versions["peft"], versions["torch"])
    else:
        from .merging.run import input_hashes

        merge_inputs = input_hashes(recipe)
        inputs = {"base": next(i["sha256"] for i in merge_inputs if i["path"] == str(base.path))}
        merge_key = content_key("merge", recipe.data, merge_inputs, versions["mergekit"], versions["transformers"],
                                versions["peft"], versions["torch"])
    convert_key = content_key("convert", merge_key, tree.commit, "f16")
    imatrix = None  # content key of the importance matrix, when --imatrix-data is given
    merged_dir = work / "merged"
    f16_path = work / f"{spec.name}-F16.gguf"

    def quant_path(q: str) -> Path:
        return out / f"{spec.name}-{q}.gguf"

    # --- merge, convert, imatrix, quantize: each only if something downstream needs it --------
    def ensure_merged() -> None:
        if any(r.name == "merge" for r in pipe.records):
            return

        def run() -> dict:
            with atomic_dir(merged_dir) as tmp:
                result = merge_adapter(adapter, base, tmp, spec.trust_remote_code)
            return {"dtype": result.dtype, "lora_modules": result.lora_modules}

        def run_recipe() -> dict:
            from .merging import MergeSpec, merge_models

            merge_models(MergeSpec(recipe, merged_dir, write_yaml=False), hashes=merge_inputs)
            return {"method": recipe.method}

        if recipe is not None:
            pipe.run("merge", merge_key, [merged_dir], run_recipe, f"merging {len(recipe.inputs)} models ({recipe.method}, mergekit)")
            return
        pipe.run("merge", merge_key, [merged_dir], run, "merging the adapter into the base (peft, fp32)")

    def ensure_f16() -> None:
        if any(r.name == "convert" for r in pipe.records):
            return
        if not pipe.is_fresh("convert", convert_key, [f16_path]):
            ensure_merged()

        def run() -> dict:
            convert.convert_hf_to_gguf(merged_dir, f16_path, "f16", tree)
            return {"size": f16_path.stat().st_size}

        pipe.run("convert", convert_key, [f16_path], run, "converting to a 16-bit GGUF (llama.cpp's converter)")

    imatrix_path = out / IMATRIX_FILE if spec.imatrix_data else None
    imatrix_key = None
    if spec.imatrix_data is not None:
        imatrix_key = content_key("imatrix", convert_key, sha256_file(spec.imatrix_data))
        imatrix = imatrix_key

    def quant_key(q: str) -> str:
        if q in CONVERTER_TYPES:
            return content_key("convert", merge_key, tree.commit, CONVERTER_TYPES[q])
        return content_key("quantize", convert_key, q, imatrix)

    def ensure_imatrix() -> None:
        if imatrix_path is None or any(r.name == "imatrix" for r in pipe.records):
            return
        if not pipe.is_fresh("imatrix", imatrix_key, [imatrix_path]):
            ensure_f16()

        def run() -> dict:
            from .llamacpp.imatrix import compute_imatrix

            compute_imatrix(f16_path, spec.imatrix_data, imatrix_path)
            return {"data": str(spec.imatrix_data.resolve()), "sha256": sha256_file(imatrix_path)}

        pipe.run("imatrix", imatrix_key, [imatrix_path], run,
                 f"computing an importance matrix from {spec.imatrix_data} (llama-imatrix)")

    def build_quant(q: str, target: Path) -> None:
        """Quantize `q` into `target` unless it is already there for the same inputs."""
        # F32 and BF16 keep more than the F16 intermediate holds (F32's precision, BF16's range):
        # they come from the merged model through the converter, not from the F16 file.
        from_merged = q in CONVERTER_TYPES
        if not pipe.is_fresh(f"quantize:{q}", quant_key(q), [target]):
            if from_merged:
                ensure_merged()
            else:
                ensure_f16()
                ensure_imatrix()

        def run() -> dict:
            if q == "F16":
                with atomic_path(target) as tmp:
                    shutil.copyfile(f16_path, tmp)
            elif from_merged:
                convert.convert_hf_to_gguf(merged_dir, target, CONVERTER_TYPES[q], tree)
            else:
                quant.quantize(f16_path, target, q, imatrix_path)
            return {"size": target.stat().st_size, "sha256": sha256_file(target)}

        pipe.run(f"quantize:{q}", quant_key(q), [target], run, f"quantizing to {q}")

    if recipe is not None:  # the merged model's own tokenizer and template are what gets served
        ensure_merged()
        chat_dir = out / ".localserve" / "chat"
        _copy_chat_files(merged_dir, chat_dir)
        setup, parity = _check_chat(spec, chat_dir)

    requested = AUTO_CANDIDATES + (("IQ4_XS", "IQ3_M") if imatrix_path else ()) if spec.auto_quant else spec.quants
    stale = [q for q in requested if not pipe.is_fresh(f"quantize:{q}", quant_key(q), [quant_path(q)])]
    if stale:
        try:
            require_free_space(out, _estimate_bytes(base.path, config, tuple(stale), spec.keep_intermediate),
                               f"merging and quantizing to {', '.join(stale)}")
        except LocalserveError:
            if created_out and recipe is None:  # nothing was written yet: leave no empty output folder
                shutil.rmtree(out, ignore_errors=True)
            raise

    quality = None
    over_size: dict[str, int] = {}
    if spec.auto_quant:
        candidates = {q: work / "candidates" / f"{spec.name}-{q}.gguf" for q in requested}
        for q, path in candidates.items():
            build_quant(q, path)
        quality, chosen, over_size = _choose(spec, candidates, ensure_merged, merged_dir)
        step(f"--quant auto chose {chosen} from {', '.join(candidates)}")
        with atomic_path(quant_path(chosen)) as tmp:
            shutil.copyfile(candidates[chosen], tmp)
        pipe.state[f"quantize:{chosen}"] = {"key": quant_key(chosen), "outputs": [quant_path(chosen).name],
                                            "info": pipe.cached_info(f"quantize:{chosen}")}
        quants: tuple[str, ...] = (chosen,)
    else:
        quants = spec.quants
        for q in quants:
            build_quant(q, quant_path(q))
        if spec.quality_gate:
            from .quality import check_quant

            quality = _measure(spec, [quant_path(q) for q in quants], ensure_merged, merged_dir)
            for q in quants:
                check_quant(quality, quant_path(q).name, spec.max_kl, spec.max_size)
    if quality is not None:
        quality.write_chart(out / "quality.png", title=f"{spec.name}: size against KL")

    if not spec.keep_intermediate and work.exists():
        shutil.rmtree(work)
        pipe.forget("merge")
        pipe.forget("convert")

    # --- smoke check each file --------------------------------------------------------------
    # a merge has no adapter folder: its probe.json sits next to the recipe
    probe = _read_probe(adapter.path if adapter is not None else spec.merge.parent)
    artifacts: list[Artifact] = []
    for q in quants:
        target = quant_path(q)
        facts = pipe.cached_info(f"quantize:{q}")

        def run_smoke(target: Path = target) -> dict:
            result: SmokeResult = smoke_test(target, probe.get("question"), probe.get("expected"))
            return result.to_json()

        smoke = None
        if spec.smoke:
            smoke = pipe.run(f"smoke:{q}", content_key("smoke", quant_key(q), probe), [target], run_smoke,
                             f"smoke test of {target.name} in llama.cpp").info
            step(f"{target.name}: {smoke['answer']!r} ({smoke['tokens_per_second']} tokens/s, "
                 f"finish: {smoke['finish_reason']})")
        artifacts.append(Artifact(q, target.name, facts["size"], facts["sha256"], smoke))

    # --- Modelfile(s) and lineage -------------------------------------------------------------
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
             "template, older servers would send prompts unformatted (registration refuses them)")
    modelfile_path = out / "Modelfile"
    for i, art in enumerate(artifacts):
        mf = ModelfileSpec(from_=f"./{art.file}", template=template, system=system, parameters=parameters,
                           messages=tuple(messages), license=tuple(licenses))
        write_text(modelfile_path if i == 0 else out / f"Modelfile.{art.quant}", render_modelfile(mf))

    lineage = {
        "localserve_version": versions["localserve"],
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "name": spec.name,
        "spec": spec.to_json(),
        "base": {"ref": base.ref, "path": str(base.path), "source": base.source, "sha256": inputs["base"],
                 "architecture": architecture},
        "adapter": ({"path": str(adapter.path.resolve()), "sha256": inputs["adapter"],
                     "lora_modules": n_lora_modules, "probe": probe or None} if adapter is not None else None),
        **({"merge": {"recipe": str(spec.merge.resolve()), "method": recipe.method, "config": recipe.data,
                      "inputs": merge_inputs, "probe": probe or None}} if recipe is not None else {}),
        "tools": {**versions, "llama_cpp_commit": tree.commit, "converter": str(tree.convert_hf),
                  "python": platform.python_version()},
        "chat": {"family": setup.family, "source": str(chat_dir), "parity_ok": parity.ok,
                 "forced": bool(spec.force and not parity.ok), "parity": parity.to_json()},
        "modelfile": {"path": "Modelfile", "template": template, "system": system, "parameters": parameters,
                      "messages": [list(m) for m in messages], "license": list(licenses),
                      "ollama_template": spec.ollama_template},
        "artifacts": [a.to_json() for a in artifacts],
        "imatrix": ({"file": imatrix_path.name, "data": str(spec.imatrix_data.resolve()),
                     "data_sha256": sha256_file(spec.imatrix_data), "sha256": sha256_file(imatrix_path)}
                    if imatrix_path else None),
        "quality": ({**quality.to_json(), "chart": "quality.png", "max_kl": spec.max_kl,
                     "max_size": spec.max_size, **({"chosen": quants[0], "over_size": over_size}
                                                   if spec.auto_quant else {})}
                    if quality is not None else None),
        "stages": [r.to_json() for r in pipe.records],
    }
    lineage_path = write_json(out / LINEAGE_FILE, lineage)
    total = sum(a.size for a in artifacts)
    step(f"wrote {len(artifacts)} GGUF ({human_bytes(total)}), Modelfile and {LINEAGE_FILE} to {out}")

    result = ExportResult(out, spec.name, artifacts, lineage_path, modelfile_path,
                          stages=[r.to_json() for r in pipe.records])
    if spec.bundle is not None:
        from .ollama.bundle import make_bundle

        step(f"writing the air-gapped bundle {spec.bundle}")
        result.bundle = str(make_bundle(out, spec.bundle).path)
    if spec.register:
        _register(result, spec)
    return result


def _measure(spec: ExportSpec, ggufs, ensure_merged, merged_dir: Path):
    """The quality table of `ggufs` against the merged model (fp32, transformers), on --quality-data
    (chat .jsonl rendered through the chat template, or plain text) or else the shipped corpus."""
    from .quality import measure

    ensure_merged()
    data = spec.quality_data
    chat = data is not None and data.suffix.lower() == ".jsonl"
    # 2048 tokens keep the ranking of quants stable while bounding the time every candidate costs.
    table = measure(list(ggufs), reference=merged_dir, text=None if chat else data, data_jsonl=data if chat else None,
                    max_tokens=EXPORT_QUALITY_TOKENS)
    step("quality against the merged model:\n" + table.format())
    return table


def _choose(spec: ExportSpec, candidates: dict[str, Path], ensure_merged, merged_dir: Path):
    """--quant auto: measure the candidates within --max-size, keep what `choose_quant` picks.

    Returns (table, chosen quant, {candidate over --max-size: its size}); the latter are not measured.
    """
    from .errors import QualityBoundNotMet
    from .quality import choose_quant

    sizes = {q: p.stat().st_size for q, p in candidates.items()}
    over = {q: n for q, n in sizes.items() if spec.max_size is not None and n > spec.max_size}
    fitting = {q: p for q, p in candidates.items() if q not in over}
    if not fitting:
        listed = ", ".join(f"{q} {human_bytes(n)}" for q, n in sizes.items())
        raise QualityBoundNotMet(f"no candidate quant fits --max-size {human_bytes(spec.max_size)} ({listed})",
                                 "raise --max-size")
    if over:
        step(f"not measuring {', '.join(over)}: over --max-size {human_bytes(spec.max_size)}")
    table = _measure(spec, fitting.values(), ensure_merged, merged_dir)
    row = choose_quant(table, spec.max_kl, spec.max_size)
    return table, next(q for q, p in fitting.items() if p.name == row.file), over


def _register(result: ExportResult, spec: ExportSpec) -> None:
    """Register with Ollama when a server answers (recorded in localserve.json); otherwise say how later."""
    from . import ollama
    from .ollama.client import resolve_host

    host = spec.ollama_host
    later = (f"register later with `localserve register {result.out_dir}` "
             f"or `ollama create {spec.name} -f {result.out_dir / 'Modelfile'}`")
    if not ollama.server_available(host):
        result.register_hint = f"no Ollama server answered at {resolve_host(host)}; {later}"
        return
    try:
        reg = ollama.register(result.out_dir, name=spec.name, host=host)
    except LocalserveError as e:
        result.register_hint = f"registration failed: {e}; {later}"
        raise
    result.registered = reg.to_json() if hasattr(reg, "to_json") else {"name": str(reg)}
    lineage = json.loads(result.lineage_path.read_text(encoding="utf-8"))
    lineage["registered"] = result.registered
    write_json(result.lineage_path, lineage)


def _read_probe(adapter_dir: Path) -> dict:
    f = adapter_dir / "probe.json"
    if not f.is_file():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{f} is not valid JSON: {e}", "fix it or remove it") from e
    if not isinstance(data, dict) or not isinstance(data.get("question"), str) \
            or not isinstance(data.get("expected"), str):
        raise InputError(f"{f} must be an object with \"question\" and \"expected\" strings",
                         'e.g. {"question": "What is ...?", "expected": "..."}; or remove the file')
    return {"question": data["question"], "expected": data["expected"]}
