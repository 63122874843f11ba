"""Every option of `localserve export`, declared once: its flag, help, value type, default and the
exports it applies to.

The spec classes (`spec.py`) take their field defaults from here (`option_field`), the CLI turns
each entry into a click option (`localserve.cli.export`), and `export_spec` turns what a user
gave into the right spec, refusing in one line an option that does not apply to the export chosen.

There are three exports (the names are `ExportRecord.kind`s):
- "gguf": one adapter (or a merge recipe) merged into its base, as GGUF files for Ollama;
- "tenants" (`--lora`): several adapters unmerged, one GGUF LoRA each on a shared base GGUF;
- "vllm" (`--target vllm`): a Hugging Face folder and its vLLM serve files, merged or `--lora`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..llamacpp.quant_types import DEFAULT_QUANT

GGUF, TENANTS, VLLM = "gguf", "tenants", "vllm"
ALL = frozenset({GGUF, TENANTS, VLLM})
OLLAMA = frozenset({GGUF, TENANTS})

# Why an option is refused for an export, in words that name the export.
REFUSAL = {
    GGUF: ("{flag} applies to --target vllm only", "drop it, or add --target vllm"),
    TENANTS: ("{flag} does not apply to --lora (one shared base + one GGUF LoRA per adapter)", "drop {flag}; {hint}"),
    VLLM: ("{flag} applies to the Ollama export, not --target vllm (vLLM serves the safetensors as is)",
           "drop {flag}, or export for Ollama without --target vllm"),
}


@dataclass(frozen=True)
class ExportOption:
    """One option. `name` is the spec field it sets (and the CLI parameter's name)."""

    name: str
    help: str
    targets: frozenset[str]
    value: str = "text"  # flag | switch (--X/--no-X) | text | int | float | size | path | file | choice
    default: Any = None  # the spec's default; per export when it differs (see `default_for`)
    flag: str | None = None  # when it is not --name-with-dashes
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    inverted: bool = False  # a --no-X flag: given, it sets the field to False
    ignored_by: frozenset[str] = frozenset()  # exports that accept it and have nothing to do with it
    hints: dict[str, str] = field(default_factory=dict)  # export -> the next step when refused there
    refusals: dict[str, str] = field(default_factory=dict)  # export -> a message of its own instead of REFUSAL's
    fields: dict[str, str] = field(default_factory=dict)  # export -> spec field, when not `name`

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    def field_for(self, kind: str) -> str:
        return self.fields.get(kind, self.name)

    def default_for(self, kind: str) -> Any:
        return self.default.get(kind) if isinstance(self.default, dict) else self.default

    @property
    def switch_flags(self) -> str:
        """A switch's two spellings, as click declares them: --x/--no-x."""
        return f"{self.cli_flag}/--no-{self.cli_flag[2:]}"

    def refuse_message(self, kind: str) -> tuple[str, str]:
        flag = self.switch_flags if self.value == "switch" else self.cli_flag
        message, hint = REFUSAL[kind]
        message = self.refusals.get(kind, message)
        return message.format(flag=flag), hint.format(flag=flag, hint=self.hints.get(kind, ""))


def _options(*entries: ExportOption) -> dict[str, ExportOption]:
    return {o.name: o for o in entries}


OPTIONS: dict[str, ExportOption] = _options(
    # --- the vLLM layout and GPU formats ---
    ExportOption("gpu_memory", "vLLM: memory per GPU for the layout (e.g. 80GB).", frozenset({VLLM}), "size"),
    ExportOption("gpus", "vLLM: GPUs per node.", frozenset({VLLM}), "int", minimum=1),
    ExportOption("nodes", "vLLM: nodes (pipeline parallel across nodes, Ray).", frozenset({VLLM}), "int", minimum=1),
    ExportOption("ctx", "vLLM: context length per sequence.", frozenset({VLLM}), "int", minimum=1),
    ExportOption("concurrency", "vLLM: concurrent sequences to size the KV cache for.", frozenset({VLLM}), "int",
                 minimum=1),
    ExportOption("quant", f"Ollama: llama.cpp type(s), comma-separated, any case (default {DEFAULT_QUANT}; "
                          "`localserve quants` lists them). vLLM: gptq-w4a16, fp8-dynamic or w8a8 (llm-compressor; "
                          "default: unquantized).", ALL,
                 default={GGUF: (DEFAULT_QUANT,), TENANTS: DEFAULT_QUANT, VLLM: None}, fields={GGUF: "quants"}),
    ExportOption("group_size", "vLLM gptq-w4a16: columns per scale (default: 128, 64 or 32, the largest dividing "
                               "every layer's input width).", frozenset({VLLM}), "int"),
    ExportOption("calibration", "vLLM --quant: the fine-tune's chat JSONL to calibrate on (default: the shipped "
                                "corpus).", frozenset({VLLM}), "file"),
    ExportOption("calibration_samples", "vLLM --quant: calibration samples (default 64).", frozenset({VLLM}), "int",
                 default=64, minimum=1),
    ExportOption("calibration_seq_len", "vLLM --quant: tokens per sample (default 512).", frozenset({VLLM}), "int",
                 default=512, minimum=8),
    # --- vLLM's serving features, written into every serve file ---
    ExportOption("prefix_caching", "vLLM: reuse the KV cache of a prompt prefix already seen (a shared system prompt "
                                   "is computed once). vLLM 0.32 turns it on by default; the export writes it out "
                                   "either way. [default: on]", frozenset({VLLM}), "switch", default=True,
                 hints={TENANTS: "it applies to --target vllm"}),
    ExportOption("speculative", "vLLM speculative decoding: ngram[:N] proposes N tokens (default 5) by looking the "
                                "last tokens up in the prompt, no draft model; draft:PATH runs a smaller model with "
                                "the same tokenizer, copied into the export. [default: off]", frozenset({VLLM}),
                 hints={TENANTS: "it applies to --target vllm"}),
    ExportOption("structured_output_backend", "vLLM: the library that constrains answers to a JSON schema, regex or "
                                              "grammar (response_format). [default: auto]", frozenset({VLLM}),
                 "choice", default="auto", choices=("auto", "xgrammar", "guidance", "outlines"),
                 hints={TENANTS: "it applies to --target vllm"}),
    # --- the engines that serve past one machine, rendered from the same layout (localserve.vllm.deploy) ---
    ExportOption("deploy", "vLLM: also write each named engine's files under deploy/, comma-separated: kserve, "
                           "llm-d, lws, production-stack, ray-serve, sglang.", frozenset({VLLM}),
                 hints={TENANTS: "it applies to --target vllm"}),
    ExportOption("lora_storage", "vLLM --lora --deploy ray-serve: the cloud storage prefix (s3://, gs://, abfss://, "
                                 "azure://) Ray Serve LLM loads the adapters from; copy adapters/ there.",
                 frozenset({VLLM}), hints={TENANTS: "it applies to --target vllm --deploy ray-serve"}),
    ExportOption("merge_engine", "How an adapter is merged: stream (tensor by tensor inside llama.cpp's converter "
                                 "or the safetensors writer; memory follows the largest tensor) or peft "
                                 "(merge_and_unload on the whole model in fp32; the reference). [default: stream]",
                 frozenset({GGUF, VLLM}), "choice", default="stream", choices=("stream", "peft"),
                 hints={TENANTS: "tenants are not merged"}),
    # --- every export ---
    ExportOption("base", "Base model folder (default: from adapter_config.json).", ALL, "path"),
    ExportOption("name", "Model name (default: the adapter folder's name).", ALL),
    ExportOption("out", "Output folder (default: exports/NAME).", ALL, "path"),
    ExportOption("keep_intermediate", "Keep the merged folder and the 16-bit GGUF.", OLLAMA, "flag", default=False),
    ExportOption("allow_pickle", "Allow .bin (pickle) weights, which can run code when loaded.", ALL, "flag",
                 default=False),
    ExportOption("trust_remote_code", "Let transformers run the model repo's own Python code.",
                 frozenset({GGUF, VLLM}), "flag", default=False,
                 hints={TENANTS: "nothing is loaded with transformers: the base and adapters are converted as they "
                                 "are"}),
    # --no-smoke / --no-register ask to skip steps the vLLM export does not have: nothing to refuse.
    ExportOption("smoke", "Skip the llama.cpp chat check.", OLLAMA, "flag", flag="--no-smoke", inverted=True,
                 default=True, ignored_by=frozenset({VLLM})),
    ExportOption("register", "Do not register with a running Ollama.", OLLAMA, "flag", flag="--no-register",
                 inverted=True, default=True, ignored_by=frozenset({VLLM})),
    ExportOption("ollama_host", "Ollama server (default: $OLLAMA_HOST or 127.0.0.1:11434).", OLLAMA, flag="--host"),
    ExportOption("template_family", "Chat family to use instead of detecting it.", ALL),
    ExportOption("template_file", "Your own Ollama Go TEMPLATE file.", OLLAMA, "file"),
    ExportOption("force", "Export even if the template parity check fails (recorded).", OLLAMA, "flag",
                 default=False),
    ExportOption("modelfile", "A Modelfile whose PARAMETER/SYSTEM/MESSAGE/LICENSE are merged into the export.",
                 frozenset({GGUF}), "file",
                 hints={TENANTS: "write PARAMETER/SYSTEM into each tenant's Modelfile.TENANT after the export"}),
    ExportOption("ollama_template", "go: write the verified TEMPLATE; native: rely on the GGUF's Jinja "
                                    "(Ollama >= 0.30 only). [default: go]", OLLAMA, "choice", default="go",
                 choices=("go", "native")),
    ExportOption("system", "SYSTEM prompt for the Modelfile.", OLLAMA),
    # --- the quality gate, importance matrices, bundles, merges: one merged GGUF export ---
    ExportOption("imatrix_data", "Text (or chat .jsonl) to compute an importance matrix from, kept as imatrix.gguf "
                                 "(enables IQ types).", frozenset({GGUF}), "file",
                 hints={TENANTS: "export the base on its own to use an importance matrix"}),
    ExportOption("max_kl", "Largest acceptable mean KL divergence: --quant auto keeps the smallest quant within it; "
                           "a requested quant that misses it is an error showing the measured table.",
                 frozenset({GGUF}), "float", hints={TENANTS: "the quality gate measures merged exports; pass one --quant"}),
    ExportOption("max_size", "Largest acceptable file size (e.g. 4GB): --quant auto keeps the lowest-KL quant that "
                             "fits (with --max-kl: the smallest meeting both); a requested quant over it is an error "
                             "showing the measured table.", frozenset({GGUF}), "size",
                 refusals={TENANTS: "{flag} does not apply to --lora (it bounds --quant auto)"},
                 hints={TENANTS: "the quality gate measures merged exports"}),
    ExportOption("quality_data", "What --max-kl/--max-size measure on: the fine-tune's chat .jsonl (rendered through "
                                 "its chat template) or plain text (default: the shipped corpus).", frozenset({GGUF}),
                 "file", refusals=dict.fromkeys((TENANTS, VLLM), "{flag} applies to the quality gate of a merged GGUF export"),
                 hints={TENANTS: "the quality gate measures one merged export"}),
    ExportOption("bundle", "Also write an air-gapped bundle (tar) to this path; install it with `localserve install`.",
                 frozenset({GGUF}), "path", hints={TENANTS: "bundle one merged export at a time"}),
    ExportOption("data", "The dataset the adapter was trained on: recorded with its sha256 in the version "
                         "(`localserve versions NAME`).", frozenset({GGUF}), "file",
                 hints={TENANTS: "record it per adapter in its README's model card instead"}),
    ExportOption("allow_stacked", "Export an adapter whose base is itself a fine-tune (an export or a merge); "
                                  "refused by default, as versions should each be trained on the base.",
                 frozenset({GGUF}), "flag", default=False, hints={TENANTS: "tenants share their base as it is"}),
    ExportOption("merge", "Export a merge of several models (a mergekit YAML; see `localserve merge`) instead of "
                          "ADAPTER.", frozenset({GGUF}), "file",
                 hints={TENANTS: "--merge and --lora are two different exports; run them separately"}),
)


def option_field(name: str, kind: str) -> Any:
    """A dataclass field whose default and metadata come from the option `name`."""
    opt = OPTIONS[name]
    default = opt.default_for(kind)
    return dataclasses.field(default=default, metadata={"option": opt})


def export_kind(target: str = "ollama", lora: bool = False) -> str:
    if target not in ("ollama", "vllm"):
        from ..errors import UnknownName

        raise UnknownName("export target", target, ["ollama", "vllm"])
    return VLLM if target == "vllm" else TENANTS if lora else GGUF


def given_options(kind: str, values: dict[str, Any]) -> dict[str, Any]:
    """The spec keyword arguments for what a user gave (None and unset flags are 'not given').

    Raises InputError, in one line, for the first option that does not apply to `kind`.
    """
    from ..errors import InputError
    from ..spec import parse_size

    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        opt = OPTIONS.get(name)
        if opt is None:
            raise TypeError(f"unknown export option {name!r}")
        if value is None or (opt.value == "flag" and value is False):
            continue
        if kind not in opt.targets:
            if kind in opt.ignored_by:
                continue
            raise InputError(*opt.refuse_message(kind))
        if opt.value == "size" and isinstance(value, str):
            value = parse_size(value)
        if opt.inverted:
            value = not value
        kwargs[opt.field_for(kind)] = value
    return kwargs
