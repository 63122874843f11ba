"""`localserve finetune` and `localserve retrain` (library: localserve.loop.finetune, localserve.loop.retrain)."""

from __future__ import annotations

import json
from pathlib import Path

import click

_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.command("finetune")
@click.argument("data", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--base", required=True, metavar="BASE",
              help="The base model: a Hugging Face folder, an id in the local Hugging Face cache, or an embedded "
                   "model's id (HuggingFaceTB/SmolLM2-135M-Instruct).")
@click.option("--recipe", "recipe_file", type=click.Path(path_type=Path, dir_okay=False), metavar="RECIPE.yaml",
              help="LoRA and training settings (rank, alpha, dropout, target_modules, learning_rate, steps or epochs, "
                   "batch_size, max_seq_length, seed); unset keys take their defaults.")
@click.option("--like", metavar="NAME:vN", help="Reuse the recipe recorded with that version.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="The adapter folder to write (default: finetunes/<first DATA file's name>).")
@click.option("--allow-stacked", is_flag=True,
              help="Allow a base that is itself one of our exports or a merge (a fine-tune stacked on a fine-tune).")
@_json
def finetune_command(data: tuple[Path, ...], base: str, recipe_file: Path | None, like: str | None, out: Path | None,
                     allow_stacked: bool, as_json: bool) -> None:
    """LoRA fine-tune of BASE on chat JSONL DATA files (TRL's SFTTrainer + peft), loss on the assistant turns.

    Writes a PEFT adapter folder, trainer_state.json and training.json (datasets and base with their
    sha256, the recipe, seed, library versions, wall time, final loss), which `register` keeps as lineage.
    """
    from ..errors import InputError
    from ..loop.finetune import FinetuneSpec, finetune, recipe_of
    from ..loop.recipe import Recipe, load_recipe

    if recipe_file is not None and like is not None:
        raise InputError(f"--recipe {recipe_file} and --like {like} both name a recipe", "give one of them")
    if recipe_file is not None:
        recipe, source = load_recipe(recipe_file), str(recipe_file.resolve())
    elif like is not None:
        recipe, source = recipe_of(like), f"like {like}"
    else:
        recipe, source = Recipe(), "defaults"
    result = finetune(FinetuneSpec(data=data, base=base, recipe=recipe, recipe_source=source, out=out,
                                   allow_stacked=allow_stacked))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    r = result.record
    click.echo(f"{result.out_dir}  {r['steps']} steps, final loss {r['final_loss']:.4f}, "
               f"{r['train_tokens_per_second']:.0f} tokens/s, {r['wall_seconds']:.0f} s"
               + (" (already there: skipped)" if result.skipped else ""))
    click.echo(f"  next: localserve export {result.out_dir} --name NAME   (then localserve register EXPORT_DIR)")


commands = [finetune_command]
