"""The `localserve` command: a thin click layer over the library.

Each module in this package exposes `commands` (a list of click commands); they are collected here,
so adding a command group is adding a file. Library errors become one line and an exit code here,
and only here.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import sys

import click

from ..errors import LocalserveError
from ..progress import set_quiet


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LocalserveError as e:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was left behind", err=True)
            ctx.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or step messages.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="localserve")
@click.pass_context
def cli(ctx: click.Context, quiet: bool, debug: bool) -> None:
    """localserve: from a fine-tuned model to a checked model served by Ollama or vLLM."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    set_quiet(quiet)
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(name)s: %(message)s")


def _collect() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for command in getattr(module, "commands", []):
            cli.add_command(command)


_collect()


def main() -> None:
    cli(prog_name="localserve")


if __name__ == "__main__":
    sys.exit(main())
