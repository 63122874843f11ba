"""`localserve serve`: exports behind llama-server on this machine (see localserve.runtimes.llama_server)."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("serve")
@click.argument("exports", nargs=-1, required=True, type=click.Path(path_type=Path, file_okay=False, exists=True))
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
              help="Port on 127.0.0.1 (0: a free one).")
@click.option("--quant", help="Which quant of a GGUF export (default: the first listed).")
@click.option("--threads", type=click.IntRange(1, 1024), help="llama-server's threads (default: its own choice).")
@click.option("--parallel", type=click.IntRange(1, 256), help="Requests decoded at once (llama-server's slots).")
def serve_command(exports: tuple[Path, ...], port: int, quant: str | None, threads: int | None,
                  parallel: int | None) -> None:
    """Serve EXPORTS with llama-server on 127.0.0.1 until Ctrl-C: OpenAI's API (/v1/chat/completions,
    /v1/models) and llama-server's own.

    A GGUF export answers to its name. A tenants export (`export A B C --lora`) loads every tenant's LoRA
    once on its base: a request's `model` (a tenant's name) selects its adapter, the export's own name is the
    base alone. Several exports run behind one process (llama-server's router mode).
    """
    from ..runtimes.llama_server import serve

    with serve(list(exports), port, quant=quant, threads=threads, parallel=parallel) as serving:
        click.echo(f"serving on {serving.url}/v1 (llama-server {serving.upstream.url}); models:")
        for n in serving.names:
            what = f"tenant of {Path(n.export).name}" if n.tenant else \
                ("base of the tenants, no adapter" if n.kind == "tenants" else "merged export")
            click.echo(f"  {n.name:<24} {what}")
        click.echo("Ctrl-C stops it")
        serving.wait()


commands = [serve_command]
