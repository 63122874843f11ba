"""`localserve quality`: what each quant costs, measured on this model and text."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("quality")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--reference", required=True, type=click.Path(path_type=Path, exists=True),
              help="The unquantized model: an HF folder (run in fp32) or an F16 GGUF.")
@click.option("--text", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Plain text to measure on (default: the shipped corpus, ~2,700 tokens).")
@click.option("--data", "data_jsonl", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Chat JSONL (the fine-tune's data), rendered through the model's chat template.")
@click.option("--imatrix-data", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Also quantize each GGUF's type with an importance matrix from this text (or chat "
                   ".jsonl) and measure both; writes imatrix.gguf and *-imatrix.gguf beside the first GGUF.")
@click.option("--ctx", "n_ctx", type=click.IntRange(min=16), default=512, show_default=True,
              help="Tokens per evaluation window.")
@click.option("--max-tokens", type=click.IntRange(min=16), help="Use at most this many tokens of the text.")
@click.option("--chart", type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the PNG chart (default: quality.png beside the first model).")
@click.option("--no-chart", is_flag=True, help="Do not write the chart.")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def quality_command(models: tuple[Path, ...], reference: Path, text: Path | None, data_jsonl: Path | None,
                    imatrix_data: Path | None, n_ctx: int, max_tokens: int | None, chart: Path | None, no_chart: bool, as_json: bool) -> None:
    """Measure MODELS against --reference: size, bits per weight, perplexity, KL divergence, top-1.

    MODELS are GGUF files and GPU-format folders (export --target vllm --quant), side by side."""
    from ..errors import InputError
    from ..quality import measure
    from ..quality.variants import with_imatrix

    if chart is not None and no_chart:
        raise InputError(f"--chart {chart} asks for the chart, and --no-chart for none", "drop one of them")
    files = list(models)
    ggufs = [f for f in files if f.is_file()]
    if imatrix_data is not None:
        if not ggufs:
            raise InputError("--imatrix-data quantizes GGUF files, and none was given", "add a .gguf, or drop --imatrix-data")
        files += with_imatrix(ggufs, reference, imatrix_data, ggufs[0].parent)
    table = measure(files, reference, text=text, data_jsonl=data_jsonl, n_ctx=n_ctx, max_tokens=max_tokens)
    chart_path = None if no_chart else table.write_chart(chart or _beside(models[0]) / "quality.png")
    if as_json:
        data = table.to_json()
        if chart_path:
            data["chart"] = str(chart_path)
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(table.format())
    if chart_path:
        click.echo(f"chart: {chart_path}")


def _beside(model: Path) -> Path:
    """The folder a model's chart goes to: a GGUF's folder; a vLLM export's folder, not its model/."""
    from ..models.folders import model_folder

    folder = model if model.is_dir() else model.parent
    return folder.parent if model_folder(folder.parent) == folder else folder


commands = [quality_command]
