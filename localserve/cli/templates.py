"""`localserve check-template`: prove the Ollama TEMPLATE reproduces the model's own chat template."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("check-template")
@click.argument("model_dir", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--family", "--template-family", "family", metavar="NAME",
              help="Use this chat family instead of detecting it (`localserve list-families`).")
@click.option("--template-file", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Check your own Ollama Go TEMPLATE from this file instead of the family's.")
@click.option("--base", type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="For an adapter folder without its own template: the base model folder.")
@click.option("--gguf", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Also render the suite through llama-server running this GGUF (the model converted): the Jinja "
                   "path of llama-server, LM Studio and Jan, compared byte for byte and token for token.")
@click.option("--json", "as_json", is_flag=True, help="Print the setup and every rendered case as JSON.")
def check_template_command(model_dir: Path, family: str | None, template_file: Path | None, base: Path | None,
                           gguf: Path | None, as_json: bool) -> None:
    """Render a suite of conversations with MODEL_DIR's own chat template (HF) and with the Ollama
    Go TEMPLATE (Go text/template, as Ollama runs it) — with --gguf, also through llama-server's Jinja;
    exit 1 on an unexplained difference."""
    from ..chat.check import check_template

    result = check_template(model_dir, family=family, template_file=template_file, base=base, gguf=gguf)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False))
    else:
        s = result.setup
        click.echo(f"family: {s.family}   stops: {', '.join(s.stop)}   "
                   f"num_ctx: {s.parameters.get('num_ctx', '-')}   tools: {'yes' if s.supports_tools else 'no'}")
        click.echo(result.report.summary())
        if result.jinja is not None:
            click.echo(result.jinja.summary())
    if not result.ok:
        raise SystemExit(1)


@click.command("list-families")
def list_families_command() -> None:
    """List the chat families localserve can detect and prove."""
    from ..chat import families

    for fam in sorted(families().values(), key=lambda f: f.name):
        click.echo(f"{fam.name:15} {'tools' if fam.supports_tools else '     '}  {fam.description}")


commands = [check_template_command, list_families_command]
