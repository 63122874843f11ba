"""Where an export folder keeps its model: the one name the vLLM export writes and the quality gate,
the quality chart and `localserve quality` read.

    model_folder(Path("exports/m-vllm"))   # exports/m-vllm/model (an HF folder: config, weights)
    display_name(Path("exports/m-vllm/model"))   # "m-vllm"
"""

from __future__ import annotations

from pathlib import Path

# A vLLM export keeps its weights, config and tokenizer (a complete HF folder) in model/, beside
# its serve files and adapters/.
MODEL_DIR = "model"


def model_folder(path: Path) -> Path:
    """`path`, or the folder holding its weights when `path` is a vLLM export (they live in model/)."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / MODEL_DIR / "config.json").is_file():
        return path / MODEL_DIR
    return path


def display_name(path: Path) -> str:
    """What a model folder is called in tables and charts: a vLLM export's model/ by its export's name."""
    path = Path(path)
    return (path.parent.name if path.name == MODEL_DIR else path.name) or "model"
