"""The three export specs, immutable and validated once; their options are declared in options.py.

    export_spec(("adapter/",), quant="Q4_K_M,Q8_0")            -> ExportSpec        (gguf)
    export_spec(("a1/", "a2/"), lora=True)                      -> TenantExportSpec  (tenants)
    export_spec(("adapter/",), target="vllm", gpu_memory="80GB") -> VllmExportSpec    (vllm)
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..llamacpp.quant_types import DEFAULT_QUANT, canonical_quants, is_quant_type
from ..spec import MODEL_NAME_RE, check_model_name, name_from_path, spec_to_json
from ..models.tensors import DEFAULT_SHARD_BYTES
from .options import GGUF, OPTIONS, TENANTS, VLLM, export_kind, given_options, option_field

_set = object.__setattr__  # validation normalises fields of the frozen dataclasses below


def _paths(spec: Any, *keys: str) -> None:
    for key in keys:
        value = getattr(spec, key)
        if value is not None:
            _set(spec, key, Path(value))


def _check_merge_engine(spec: Any) -> None:
    from ..models.merge import MERGE_ENGINES

    if spec.merge_engine not in MERGE_ENGINES:
        raise InputError(f"--merge-engine must be one of {', '.join(MERGE_ENGINES)}, not {spec.merge_engine!r}")


def _check_ollama_template(spec: Any) -> None:
    if spec.ollama_template not in ("go", "native"):
        raise InputError(f"--ollama-template must be 'go' or 'native', not {spec.ollama_template!r}")


def _check_ollama_options(spec: Any) -> None:
    """Options of the Ollama exports that contradict each other: each pair refused in one line."""
    if not spec.register and spec.ollama_host is not None:
        raise InputError(f"--host {spec.ollama_host} names the Ollama to register with, and --no-register skips the "
                         "registration", "drop one of them (register later with `localserve register DIR --host URL`)")
    if spec.ollama_template == "native" and spec.template_file is not None:
        raise InputError(f"--template-file {spec.template_file} is a Go TEMPLATE for the Modelfile, and "
                         "--ollama-template native writes none (Ollama applies the GGUF's own chat template)",
                         "drop one of them")


@dataclass(frozen=True)
class ExportSpec:
    """`localserve export ADAPTER` (or `--merge RECIPE.yaml`): one merged model as GGUF files for Ollama.

    `quants` holds llama.cpp type names in their canonical spelling (see
    `localserve.llamacpp.quant_types`); any case is accepted on the way in.
    """

    adapter: Path | None = None  # None with `merge`
    quants: tuple[str, ...] = option_field("quant", GGUF)
    base: Path | None = option_field("base", GGUF)
    name: str | None = option_field("name", GGUF)
    out: Path | None = option_field("out", GGUF)
    keep_intermediate: bool = option_field("keep_intermediate", GGUF)
    allow_pickle: bool = option_field("allow_pickle", GGUF)
    trust_remote_code: bool = option_field("trust_remote_code", GGUF)
    smoke: bool = option_field("smoke", GGUF)
    register: bool = option_field("register", GGUF)
    ollama_host: str | None = option_field("ollama_host", GGUF)
    template_family: str | None = option_field("template_family", GGUF)
    template_file: Path | None = option_field("template_file", GGUF)
    force: bool = option_field("force", GGUF)
    modelfile: Path | None = option_field("modelfile", GGUF)
    ollama_template: str = option_field("ollama_template", GGUF)
    system: str | None = option_field("system", GGUF)
    bundle: Path | None = option_field("bundle", GGUF)
    imatrix_data: Path | None = option_field("imatrix_data", GGUF)
    max_kl: float | None = option_field("max_kl", GGUF)
    max_size: int | None = option_field("max_size", GGUF)
    quality_data: Path | None = option_field("quality_data", GGUF)
    merge: Path | None = option_field("merge", GGUF)
    merge_engine: str = option_field("merge_engine", GGUF)
    data: Path | None = option_field("data", GGUF)
    allow_stacked: bool = option_field("allow_stacked", GGUF)

    def __post_init__(self) -> None:
        if self.adapter is not None and self.merge is not None:
            raise InputError(f"export takes either an ADAPTER folder or --merge RECIPE.yaml, not both: ADAPTER "
                             f"({self.adapter}) and --merge ({self.merge}) are two different exports",
                             "pass one of them: localserve export ADAPTER ...  |  localserve export --merge RECIPE.yaml")
        if self.adapter is None and self.merge is None:
            raise InputError("export needs either an ADAPTER folder or --merge RECIPE.yaml",
                             "localserve export ADAPTER ...  |  localserve export --merge RECIPE.yaml ...")
        if self.merge is not None and self.base is not None:
            raise InputError("--base does not apply to --merge", "name the base as base_model in the merge recipe")
        if self.merge is not None and self.allow_stacked:
            raise InputError("--allow-stacked does not apply to --merge: it lets an ADAPTER's base be a fine-tune, "
                             "and a merge recipe names its models itself", "drop --allow-stacked")
        if self.merge is not None and self.merge_engine != OPTIONS["merge_engine"].default:
            raise InputError(f"--merge-engine {self.merge_engine} does not apply to --merge: it chooses how an ADAPTER "
                             "is merged, and a recipe is merged by its own method", "drop --merge-engine")
        _check_ollama_options(self)
        _paths(self, "adapter", "base", "out", "template_file", "modelfile", "imatrix_data", "quality_data", "bundle",
               "merge", "data")
        if isinstance(self.quants, str):
            _set(self, "quants", tuple(self.quants.split(",")))
        _set(self, "quants", canonical_quants(self.quants, have_imatrix=self.imatrix_data is not None))
        source = self.adapter if self.adapter is not None else self.merge.with_suffix("")
        _set(self, "name", check_model_name(self.name or name_from_path(source)))
        _check_ollama_template(self)
        _check_merge_engine(self)
        if self.max_kl is not None and self.max_kl <= 0:
            raise InputError(f"--max-kl must be positive, not {self.max_kl}")
        if self.max_size is not None and self.max_size <= 0:
            raise InputError(f"--max-size must be positive, not {self.max_size}")
        if "auto" in self.quants:
            if len(self.quants) > 1:
                raise InputError("--quant auto cannot be combined with other quant types",
                                 "pass either auto or a list of types")
            if self.max_kl is None and self.max_size is None:
                raise InputError("--quant auto needs a bound to choose by", "pass --max-kl 0.05 and/or --max-size 4GB")
        if self.quality_data is not None and not self.quality_gate:
            raise InputError("--quality-data is the text the quality gate measures on, and no bound was given",
                             "add --max-kl and/or --max-size (with --quant auto or a list of types)")
        if self.quality_data is not None and not self.quality_data.is_file():
            raise InputError(f"no such file: {self.quality_data}",
                             "pass the fine-tune's chat .jsonl (or a plain text file) to --quality-data")

    @property
    def auto_quant(self) -> bool:
        return self.quants == ("auto",)

    @property
    def quality_gate(self) -> bool:
        return self.max_kl is not None or self.max_size is not None

    @property
    def out_dir(self) -> Path:
        return self.out if self.out is not None else Path("exports") / str(self.name)

    def to_json(self) -> dict[str, Any]:
        return spec_to_json(self)

    @classmethod
    def like(cls, recorded: dict[str, Any], **changes: Any) -> "ExportSpec":
        """The spec an export recorded (localserve.json's `spec`) with `changes`: how `retrain` exports a new
        fine-tune as the live version was exported. Keys this version does not know are left out."""
        known = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in recorded.items() if k in known}, **changes})


@dataclass(frozen=True)
class TenantExportSpec:
    """`localserve export A1 A2 ... --lora` for Ollama: one shared base GGUF plus one GGUF LoRA per adapter."""

    adapters: tuple[Path, ...] = ()
    quant: str = option_field("quant", TENANTS)
    base: Path | None = option_field("base", TENANTS)
    name: str | None = option_field("name", TENANTS)  # prefix of tenant names (NAME-<adapter folder>)
    out: Path | None = option_field("out", TENANTS)
    keep_intermediate: bool = option_field("keep_intermediate", TENANTS)
    allow_pickle: bool = option_field("allow_pickle", TENANTS)
    smoke: bool = option_field("smoke", TENANTS)
    register: bool = option_field("register", TENANTS)
    ollama_host: str | None = option_field("ollama_host", TENANTS)
    template_family: str | None = option_field("template_family", TENANTS)
    template_file: Path | None = option_field("template_file", TENANTS)
    force: bool = option_field("force", TENANTS)
    ollama_template: str = option_field("ollama_template", TENANTS)
    system: str | None = option_field("system", TENANTS)

    def __post_init__(self) -> None:
        if not self.adapters:
            raise InputError("--lora needs at least one ADAPTER folder", "localserve export A1 A2 ... --lora")
        _set(self, "adapters", tuple(Path(a) for a in self.adapters))
        _paths(self, "base", "out", "template_file")
        listed = [q for q in str(self.quant).split(",") if q.strip()]
        quants = canonical_quants(listed or [DEFAULT_QUANT])  # Q4_K_M,q4_k_m is one type
        if len(quants) > 1:
            raise InputError(f"--lora quantizes the shared base to one type, not {len(quants)} ({self.quant})",
                             "pass one, e.g. --quant Q4_K_M")
        if quants == ("auto",):
            raise InputError("--quant auto does not apply to --lora", "pass one type, e.g. --quant Q4_K_M")
        _set(self, "quant", quants[0])
        _check_ollama_options(self)
        if self.name is not None:
            check_model_name(self.name)
        _check_ollama_template(self)
        seen: dict[str, Path] = {}
        for adapter, tenant in zip(self.adapters, self.tenant_names):
            if not MODEL_NAME_RE.match(tenant):
                raise InputError(f"tenant name {tenant!r} (from {adapter}) is not a valid Ollama model name",
                                 "rename the adapter folder, or pass --name")
            if tenant.lower() in seen:
                raise InputError(f"two adapters would both be tenant {tenant!r}: {seen[tenant.lower()]} and {adapter}",
                                 "tenant names come from the adapter folder names; rename one folder")
            seen[tenant.lower()] = adapter

    @property
    def tenant_names(self) -> tuple[str, ...]:
        names = tuple(name_from_path(a) for a in self.adapters)
        return tuple(f"{self.name}-{n}"[:80] for n in names) if self.name else names

    @property
    def export_name(self) -> str:
        return self.name or "tenants"

    @property
    def out_dir(self) -> Path:
        return self.out if self.out is not None else Path("exports") / f"{self.export_name}-lora"

    def to_json(self) -> dict[str, Any]:
        return spec_to_json(self)


# Tokens the quality gate measures every quant on: enough to rank quants stably, few enough that each
# candidate costs seconds, not minutes. The GGUF and the vLLM export measure the same amount.
QUALITY_GATE_TOKENS = 2048

# vLLM's --dtype auto: float32 checkpoints are served in float16, the others as stored.
VLLM_DTYPE_BYTES = {"auto": 2, "half": 2, "float16": 2, "bfloat16": 2, "float": 4, "float32": 4}


@dataclass(frozen=True)
class VllmExportSpec:
    """`localserve export --target vllm`: a Hugging Face folder vLLM serves as is, and its serve files.

    Without `lora`, one adapter is merged into its base. With `lora`, every adapter is kept unmerged
    on the shared base and served by name (`model=NAME`). The layout options size the server:
    `gpu_memory` (bytes per GPU) is required with any of `gpus`, `nodes`, `ctx`, `concurrency`.
    """

    adapters: tuple[Path, ...] = ()
    lora: bool = False
    base: Path | None = option_field("base", VLLM)
    name: str | None = option_field("name", VLLM)
    out: Path | None = option_field("out", VLLM)
    allow_pickle: bool = option_field("allow_pickle", VLLM)
    trust_remote_code: bool = option_field("trust_remote_code", VLLM)
    template_family: str | None = option_field("template_family", VLLM)  # whose end-of-turn markers join EOS
    dtype: str = "auto"
    shard_bytes: int = DEFAULT_SHARD_BYTES
    gpu_memory: int | None = option_field("gpu_memory", VLLM)
    gpus: int | None = option_field("gpus", VLLM)
    nodes: int | None = option_field("nodes", VLLM)
    ctx: int | None = option_field("ctx", VLLM)
    concurrency: int | None = option_field("concurrency", VLLM)
    gpu_memory_utilization: float = 0.9
    max_loras: int | None = None
    max_cpu_loras: int | None = None
    port: int = 8000
    # GPU formats (llm-compressor, see localserve.gpuquant): a name from gpuquant.FORMATS, or None.
    quant: str | None = option_field("quant", VLLM)
    group_size: int | None = option_field("group_size", VLLM)  # default: the largest of 128, 64, 32 that fits
    calibration: Path | None = option_field("calibration", VLLM)
    calibration_samples: int = option_field("calibration_samples", VLLM)
    calibration_seq_len: int = option_field("calibration_seq_len", VLLM)
    merge_engine: str = option_field("merge_engine", VLLM)
    prefix_caching: bool = option_field("prefix_caching", VLLM)
    speculative: str | None = option_field("speculative", VLLM)  # ngram[:N] | draft:PATH; see `speculation`
    structured_output_backend: str = option_field("structured_output_backend", VLLM)
    deploy: tuple[str, ...] = option_field("deploy", VLLM)  # engine names, see localserve.vllm.deploy
    lora_storage: str | None = option_field("lora_storage", VLLM)
    measure_quality: bool = True  # KL / top-1 against the unquantized merged model
    quality_tokens: int = QUALITY_GATE_TOKENS

    def __post_init__(self) -> None:
        _set(self, "adapters", tuple(Path(a) for a in self.adapters))
        _paths(self, "base", "out", "calibration")
        if not self.adapters:
            raise InputError("export --target vllm needs an ADAPTER folder",
                             "localserve export ADAPTER --target vllm  |  localserve export A1 A2 --target vllm --lora")
        if len(self.adapters) > 1 and not self.lora:
            raise InputError(f"{len(self.adapters)} adapters given: a merged export takes one",
                             "add --lora to serve them unmerged on one base")
        if self.template_family is not None:
            from ..chat.families import get_family

            get_family(self.template_family)  # an unknown name lists the known ones
        if self.dtype not in VLLM_DTYPE_BYTES:
            raise InputError(f"unknown vLLM dtype {self.dtype!r}; valid: {', '.join(VLLM_DTYPE_BYTES)}")
        if self.shard_bytes <= 0:
            raise InputError(f"shard size must be positive, not {self.shard_bytes}")
        sizing = [k for k in ("gpus", "nodes", "ctx", "concurrency") if getattr(self, k) is not None]
        if sizing and self.gpu_memory is None:
            raise InputError(f"--{sizing[0]} sizes the layout, which needs the memory of one GPU",
                             "add --gpu-memory, e.g. --gpu-memory 80GB")
        for key in ("gpu_memory", "gpus", "nodes", "ctx", "concurrency", "max_loras", "max_cpu_loras", "port"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise InputError(f"--{key.replace('_', '-')} must be positive, not {value}")
        if not self.lora and (self.max_loras or self.max_cpu_loras):
            raise InputError("max_loras/max_cpu_loras apply to --lora only")
        _check_merge_engine(self)
        if self.lora and self.merge_engine != OPTIONS["merge_engine"].default:
            raise InputError(f"--merge-engine {self.merge_engine} chooses how an adapter is merged, and --lora keeps "
                             "the adapters unmerged", "drop one of them")
        self._check_quant()
        from ..vllm.serve import STRUCTURED_OUTPUT_BACKENDS

        if self.structured_output_backend not in STRUCTURED_OUTPUT_BACKENDS:
            raise InputError(f"--structured-output-backend must be one of {', '.join(STRUCTURED_OUTPUT_BACKENDS)}, "
                             f"not {self.structured_output_backend!r}")
        if self.speculative is not None:
            speculation(self.speculative)  # refused here, in one line, before anything is resolved
        self._check_deploy()
        # Under --lora the adapters keep their folder names; the base's name is known once it is resolved.
        name = self.name or (None if self.lora else name_from_path(self.adapters[0]))
        if name is not None:
            check_model_name(name)
        _set(self, "name", name)

    def _check_deploy(self) -> None:
        from ..vllm.deploy import deploy_names

        _set(self, "deploy", deploy_names(self.deploy))  # an unknown engine lists the valid ones
        if self.lora_storage is not None and "ray-serve" not in self.deploy:
            raise InputError("--lora-storage is where Ray Serve LLM loads the adapters, and --deploy names no ray-serve",
                             "add --deploy ray-serve, or drop --lora-storage")
        if self.lora_storage is not None and not self.lora:
            raise InputError("--lora-storage holds unmerged adapters, and this export merges its adapter",
                             "add --lora, or drop --lora-storage")

    def _check_quant(self) -> None:
        from ..gpuquant import FORMATS, get_format

        if self.quant is None:
            given = [k for k in ("group_size", "calibration") if getattr(self, k) is not None]
            given += [k for k in ("calibration_samples", "calibration_seq_len")
                      if getattr(self, k) != OPTIONS[k].default]
            if given:
                raise InputError(f"--{given[0].replace('_', '-')} applies to a quantized export",
                                 "add --quant gptq-w4a16 (or fp8-dynamic, w8a8)")
            return
        first = self.quant.split(",")[0].strip()
        if first.lower() == "auto" or is_quant_type(first):
            usable = ", ".join(n for n, f in FORMATS.items() if not f.refused)
            raise InputError(f"--quant {self.quant} applies to the Ollama export, not --target vllm (GGUF types are "
                             f"llama.cpp's; vLLM takes {usable})", "pass --quant gptq-w4a16, or drop --target vllm")
        fmt = get_format(self.quant)
        _set(self, "quant", fmt.name)
        if self.lora:
            raise InputError(f"--quant {fmt.name} quantizes the merged model; --lora keeps the base unmerged",
                             "drop --lora, or drop --quant")
        if self.group_size is not None and not fmt.grouped:
            raise InputError(f"--group-size applies to grouped formats (gptq-w4a16); {fmt.name} is scaled per channel",
                             "drop --group-size")
        if self.calibration is not None:
            if not fmt.calibrated:
                raise InputError(f"{fmt.name} needs no calibration data", "drop --calibration")
            if not self.calibration.is_file():
                raise InputError(f"no such calibration file: {self.calibration}", "pass the fine-tune's chat JSONL")
        for key in ("calibration_samples", "calibration_seq_len", "quality_tokens"):
            if getattr(self, key) <= 0:
                raise InputError(f"--{key.replace('_', '-')} must be positive, not {getattr(self, key)}")

    def out_dir(self, name: str) -> Path:
        return self.out if self.out is not None else Path("exports") / f"{name}-vllm"

    def to_json(self) -> dict[str, Any]:
        return spec_to_json(self)


AnyExportSpec = ExportSpec | TenantExportSpec | VllmExportSpec

# Tokens a proposer guesses ahead per step when --speculative names no N: vLLM's documented examples use 5.
DEFAULT_SPECULATIVE_TOKENS = 5
SPECULATIVE_FORMS = "ngram, ngram:N (N tokens proposed per step, 1-16) or draft:PATH (a model folder)"


@dataclass(frozen=True)
class Speculation:
    """What `--speculative` asks for: vLLM's speculative_config without the draft's place in the export."""

    method: str  # "ngram" | "draft"
    tokens: int  # num_speculative_tokens
    draft: Path | None = None


def speculation(value: str) -> Speculation:
    """`--speculative` parsed: ngram | ngram:N | draft:PATH; InputError in one line otherwise."""
    method, sep, rest = value.strip().partition(":")
    if method == "ngram":
        if not sep:
            return Speculation("ngram", DEFAULT_SPECULATIVE_TOKENS)
        if not rest.isdigit() or not 1 <= int(rest) <= 16:
            raise InputError(f"--speculative {value}: N must be a whole number from 1 to 16, not {rest!r}",
                             "e.g. --speculative ngram:4")
        return Speculation("ngram", int(rest))
    if method == "draft":
        if not rest:
            raise InputError(f"--speculative {value} names no draft model", "e.g. --speculative draft:models/small")
        draft = Path(rest).expanduser()
        if not (draft / "config.json").is_file():
            raise InputError(f"--speculative {value}: {draft} is not a model folder (no config.json)",
                             "name a Hugging Face folder of a smaller model with the same tokenizer")
        return Speculation("draft", DEFAULT_SPECULATIVE_TOKENS, draft)
    raise InputError(f"--speculative {value!r} is not a speculation vLLM runs here", f"pass {SPECULATIVE_FORMS}")


def export_spec(adapters: tuple[str | Path, ...] = (), target: str = "ollama", lora: bool = False,
                **options: Any) -> AnyExportSpec:
    """The spec for what a user typed: `target` and `lora` choose the export, `options` are the
    values of `OPTIONS` (None or an unset flag: not given). One line refuses what does not apply."""
    kind = export_kind(target, lora)
    kwargs = given_options(kind, options)
    adapters = tuple(Path(a) for a in adapters)
    if kind == VLLM:
        return VllmExportSpec(adapters=adapters, lora=lora, **kwargs)
    if kind == TENANTS:
        return TenantExportSpec(adapters=adapters, **kwargs)
    if len(adapters) > 1:
        raise InputError(f"{len(adapters)} adapters given: export merges one adapter into its base",
                         "pass one ADAPTER, add --lora to serve several on one base, or merge them with --merge")
    spec = ExportSpec(adapter=adapters[0] if adapters else None, **kwargs)
    _say_duplicates(options.get("quant"))
    return spec


def _say_duplicates(quant: str | None) -> None:
    """--quant Q4_K_M,q4_k_m is one type, exported once: said, not refused."""
    from ..progress import step

    spellings: dict[str, list[str]] = {}
    for raw in (quant or "").split(","):
        if raw.strip():
            spellings.setdefault(canonical_quants([raw], have_imatrix=True)[0], []).append(raw.strip())
    for canon, given in spellings.items():
        if len(given) > 1:
            step(f"--quant names {canon} {len(given)} times ({', '.join(given)}): it is exported once")


__all__ = ["AnyExportSpec", "ExportSpec", "Speculation", "TenantExportSpec", "VllmExportSpec", "export_spec",
           "speculation"]
