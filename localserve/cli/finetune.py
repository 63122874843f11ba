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
@click.option("--template-family", metavar="NAME",
              help="Render the conversations with this chat family's template (`localserve list-families`), which "
                   "the adapter then carries: for a pretrained base without a chat template.")
@_json
def finetune_command(data: tuple[Path, ...], base: str, recipe_file: Path | None, like: str | None, out: Path | None,
                     allow_stacked: bool, template_family: str | None, as_json: bool) -> None:
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
                                   allow_stacked=allow_stacked, template_family=template_family))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    r = result.record
    click.echo(f"{result.out_dir}  {r['steps']} steps, final loss {r['final_loss']:.4f}, "
               f"{r['train_tokens_per_second']:.0f} tokens/s, {r['wall_seconds']:.0f} s"
               + (" (already there: skipped)" if result.skipped else ""))
    click.echo(f"  next: localserve export {result.out_dir} --name NAME   (then localserve register EXPORT_DIR)")


@click.command("retrain")
@click.argument("name")
@click.option("--data", "data", multiple=True, type=click.Path(path_type=Path, dir_okay=False), metavar="NEW.jsonl",
              help="New chat JSONL (repeatable), added to the live version's recorded datasets (none: the same data "
                   "on --base).")
@click.option("--base", metavar="NEW_BASE",
              help="Fine-tune from a new base model instead of the live version's (its chat family detected afresh).")
@click.option("--recipe", "recipe_file", type=click.Path(path_type=Path, dir_okay=False), metavar="RECIPE.yaml",
              help="A recipe instead of the live version's recorded one (needed when it has none).")
@click.option("--suite", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="The golden suite: the new version against NAME:latest, paired case by case.")
@click.option("--promote", is_flag=True, help="With --suite: promote the new version to NAME:latest if the gate agrees.")
@click.option("--ab", type=float, metavar="P",
              help="Put the new version into NAME's A/B experiment at P%% of the users (the live version the control), "
                   "for `localserve ab decide` to judge.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False),
              help="The work folder: adapter/ and export/ (default: retrains/NAME-<key of the inputs>).")
@click.option("--allow-stacked", is_flag=True, help="Allow a base that is itself one of our exports or a merge.")
@click.option("--template-family", metavar="NAME",
              help="With --base: render with this chat family's template (for a new base without a chat template).")
@click.option("--host", help="Ollama server URL (default: $OLLAMA_HOST or http://127.0.0.1:11434).")
@click.option("--store", is_flag=False, flag_value="", default=None, metavar="[DIR]",
              help="Work on Ollama's model folder directly (default DIR: $OLLAMA_MODELS or ~/.ollama/models).")
@_json
def retrain_command(name: str, data: tuple[Path, ...], base: str | None, recipe_file: Path | None, suite: Path | None,
                    promote: bool, ab: float | None, out: Path | None, allow_stacked: bool,
                    template_family: str | None, host: str | None, store: str | None, as_json: bool) -> None:
    """Retrain NAME: the live version's datasets plus --data, its recipe, from the base; exported as it was,
    registered as NAME:vN+1; with --suite, the gate against NAME:latest; with --ab P, into the running A/B.

    Every stage is resumable (the same command again skips what is done) and an event on the new version.
    """
    from ..lifecycle.places import open_place
    from ..loop.recipe import load_recipe
    from ..loop.retrain import RetrainSpec, retrain

    spec = RetrainSpec(name, data=data, base=base, recipe=load_recipe(recipe_file) if recipe_file else None,
                       recipe_source=str(recipe_file.resolve()) if recipe_file else None, suite=suite,
                       promote=promote, ab=ab, out=out, allow_stacked=allow_stacked, template_family=template_family)
    result = retrain(spec, open_place(host, store), export_like)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    t = result.training
    click.echo(f"{result.version} {'registered' if result.new else 'was registered already'} (parent "
               f"{result.parent}): {result.export_dir}")
    click.echo(f"  fine-tune: {len(t.get('datasets') or [])} dataset(s), {t.get('steps')} steps, final loss "
               f"{t.get('final_loss', float('nan')):.4f}, base {t.get('base', {}).get('ref')}")
    if result.table:
        click.echo(result.table)
    if result.promoted:
        click.echo(f"{name}:latest -> {result.version} (undo: localserve rollback {name}:latest)")
    elif result.gate is not None:
        click.echo(f"the gate would promote {result.version}; not promoted (pass --promote, or --ab P)")
    if result.ab is not None:
        click.echo(f"A/B {name}: " + ", ".join(f"{v}={w:g}" for v, w in result.ab.items()) +
                   f"; judge it with `localserve ab decide {name} --success CONDITION`")


def export_like(adapter: Path, out: Path, recorded: dict, new_base: bool) -> Path:
    """Export `adapter` into `out` with an export's recorded spec (retrain's exporter): not registered (retrain
    registers it as the next version); with a new base, the chat family is detected afresh."""
    from ..exports import ExportSpec, export

    changes: dict = {"adapter": adapter, "out": out, "base": None, "merge": None, "register": False,
                     "ollama_host": None, "bundle": None, "data": None}
    if new_base:
        changes.update(template_family=None, template_file=None)
    return export(ExportSpec.like(recorded, **changes)).out_dir


commands = [finetune_command, retrain_command]
