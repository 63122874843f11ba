"""`localserve merge` and `localserve merge-methods` (library: localserve.merging)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import InputError
from ..spec import parse_size


@click.command("merge")
@click.argument("inputs", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), help="Output model folder.")
@click.option("--method", help="Shorthand: merge method (`localserve merge-methods` lists them); INPUTS are models.")
@click.option("--base", type=click.Path(path_type=Path), help="Shorthand: the base model (ties, dare_*, task_arithmetic ...).")
@click.option("--t", type=float, help="Shorthand: interpolation factor for slerp (0 = first model, 1 = second).")
@click.option("--density", type=float, help="Shorthand: fraction of each delta kept (ties, dare_*, ...).")
@click.option("--weight", "weights", type=float, multiple=True, help="Shorthand: a weight per model (repeat), or one for all.")
@click.option("--shard-size", default="1GB", show_default=True, help="Largest output shard (bounds memory).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (DARE's random drops).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def merge_command(inputs: tuple[Path, ...], out: Path, method: str | None, base: Path | None, t: float | None,
                  density: float | None, weights: tuple[float, ...], shard_size: str, seed: int,
                  as_json: bool) -> None:
    """Merge models with mergekit: `merge CONFIG.yaml -o OUT`, or `merge --method slerp --t 0.5 A B -o OUT`.

    Inputs may be full fine-tunes or LoRA adapters of one base. The shorthand writes the
    equivalent mergekit YAML next to the output (OUT.yaml).
    """
    from ..merging import MergeSpec, load_recipe, merge_models, shorthand_recipe

    if method is None:
        if len(inputs) != 1:
            raise InputError("give one mergekit YAML, or --method with the models to merge",
                             "localserve merge CONFIG.yaml -o OUT  |  localserve merge --method slerp --t 0.5 A B -o OUT")
        if base is not None or t is not None or density is not None or weights:
            raise InputError("--base/--t/--density/--weight belong to the shorthand; with a YAML, set them there",
                             "or pass --method too")
        recipe = load_recipe(inputs[0])
    else:
        recipe = shorthand_recipe(method, inputs, base=base, t=t, density=density, weights=weights)
    result = merge_models(MergeSpec(recipe, out, shard_size=parse_size(shard_size), seed=seed,
                                    write_yaml=method is not None))
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(f"merged ({result.method}): {result.out}")
    if result.yaml_path:
        click.echo(f"recipe:  {result.yaml_path}")


@click.command("merge-methods")
def merge_methods_command() -> None:
    """List mergekit's merge methods, and whether each needs a base model."""
    from ..merging import method_names, method_spec, needs_base

    for name in method_names():
        params = ", ".join(p.name for p in method_spec(name).parameters)
        click.echo(f"{name}{'  (needs a base)' if needs_base(name) else ''}  [{params}]")


commands = [merge_command, merge_methods_command]
