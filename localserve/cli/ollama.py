"""Ollama commands: register, ls, show, rm, promote, rollback, bundle, install, verify.

Model-management commands take `--host URL` (a running Ollama) or `--store [DIR]` (Ollama's model
folder on disk, default $OLLAMA_MODELS or ~/.ollama/models), never both.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import InputError

_host = click.option("--host", help="Ollama server URL (default: $OLLAMA_HOST or http://127.0.0.1:11434).")
_store = click.option("--store", is_flag=False, flag_value="", default=None, metavar="[DIR]",
                      help="Work on Ollama's model folder directly (default DIR: $OLLAMA_MODELS or ~/.ollama/models).")
_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _target(host: str | None, store: str | None):
    """(target object, id used in the promote history)."""
    from ..ollama.client import OllamaServer
    from ..ollama.store import ModelStore

    if host and store is not None:
        raise InputError("--host and --store name two different places", "pass one of them")
    if store is not None:
        s = ModelStore(store or None)
        return s, f"store:{s.root.resolve()}"
    server = OllamaServer(host)
    return server, server.host


def _size(n: int) -> str:
    from ..fsutil import human_bytes

    return human_bytes(n)


@click.command("register")
@click.argument("output_dir", type=click.Path(path_type=Path, file_okay=False))
@click.option("--name", help="NAME:TAG to create beside the version NAME:vN (default: <export name>:<quant>, "
                             "e.g. demo:q4_k_m).")
@click.option("--quant", help="Which exported quant to register (default: the first listed).")
@_host
@_store
@_json
def register_command(output_dir: Path, name: str | None, quant: str | None, host: str | None, store: str | None,
                     as_json: bool) -> None:
    """Register OUTPUT_DIR with Ollama as the next version NAME:vN (and NAME:<quant>).

    Through a running Ollama's API, or with --store into Ollama's model folder. For an `export --lora`
    folder: every tenant, on the base uploaded once.
    """
    from ..exports.tenants import register_record
    from ..lifecycle.places import open_place
    from ..lifecycle.versions import register_version
    from ..lineage import read_record

    record = read_record(output_dir)
    if record.kind == "tenants":
        if name or quant or store is not None:
            flag = "name" if name else "quant" if quant else "store"
            raise InputError(f"--{flag} does not apply to the multi-tenant export {output_dir}",
                             "its tenants are registered under the names in its localserve.json, through the API")
        reg = register_record(output_dir, record, host)
        if as_json:
            click.echo(json.dumps(reg, indent=2))
            return
        click.echo(f"registered {', '.join(t['name'] for t in reg['tenants'])} on Ollama {reg['server_version']} "
                   f"at {reg['host']} (one base, {reg['base_digest'][:19]})")
        return
    r = register_version(output_dir, open_place(host, store), record=record, tag=name, quant=quant)
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=2))
        return
    click.echo(f"registered {', '.join(r.models)} at {r.place} ({r.manifest_digest[:19]})"
               + ("" if r.new else f"; this export already was {r.version.ref}"))
    click.echo(f"try: ollama run {r.models[0]}    check: localserve verify {r.models[0]}")


@click.command("ls")
@_host
@_store
@_json
def ls_command(host: str | None, store: str | None, as_json: bool) -> None:
    """List the models Ollama has (through the API, or read from --store)."""
    target, _ = _target(host, store)
    if store is not None:
        rows = [{"name": m.name, "digest": m.digest, "size": m.size, "modified_at": m.modified_at}
                for m in target.models()]
    else:
        rows = [{"name": m.get("model") or m.get("name"), "digest": m.get("digest", ""), "size": m.get("size", 0),
                 "modified_at": m.get("modified_at", "")} for m in target.list()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no models")
        return
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        click.echo(f"{r['name']:<{width}}  {r['digest'][:12]}  {_size(r['size']):>10}  {str(r['modified_at'])[:19]}")


@click.command("show")
@click.argument("name")
@_host
@_store
@click.option("--modelfile", "only_modelfile", is_flag=True, help="Print only the Modelfile.")
def show_command(name: str, host: str | None, store: str | None, only_modelfile: bool) -> None:
    """Show a version's lineage (NAME:vN), or a model's details, template, parameters and Modelfile.

    A version known to the version store is shown from it: its export record, training facts, where it
    is registered with which digest, its evaluations and promotion events. With --host or --store, or
    for any other name, Ollama's view of the model.
    """
    if host is None and store is None and not only_modelfile:
        from ..lifecycle.store import VersionStore, parse_version_ref

        try:
            parse_version_ref(name)
            with VersionStore() as versions:
                v = versions.version(name)
                info = {**v.to_json(), "registrations": [{**r.__dict__, "manifest": None}
                                                         for r in versions.registrations(v)],
                        "evaluations": versions.evaluations(v), "events": versions.events(version=v.ref)}
            click.echo(json.dumps(info, indent=2, ensure_ascii=False, default=str))
            return
        except InputError:
            pass  # not a version: ask Ollama
    target, _ = _target(host, store)
    if store is not None:
        from ..ollama.layers import modelfile_text

        gguf, recipe, config = target.read_recipe(name)
        info = {"details": config, "template": recipe.template, "system": recipe.system,
                "parameters": recipe.parameters, "messages": recipe.messages}
        try:
            info["modelfile"] = modelfile_text(str(gguf), recipe)
        except InputError:
            info["modelfile"] = None
    else:
        info = target.show(name)
    if only_modelfile:
        click.echo(info.get("modelfile") or "")
        return
    info.pop("model_info", None), info.pop("tensors", None)
    click.echo(json.dumps(info, indent=2, ensure_ascii=False, default=str))


@click.command("rm")
@click.argument("name")
@_host
@_store
def rm_command(name: str, host: str | None, store: str | None) -> None:
    """Remove a model (its manifest, and blobs no other model uses)."""
    target, where = _target(host, store)
    target.delete(name)
    click.echo(f"removed {name} from {where}")


@click.command("bundle")
@click.argument("output_dir", required=False, type=click.Path(path_type=Path, file_okay=False))
@click.option("-o", "--out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="The bundle file to write (e.g. model.tar).")
@click.option("--from-store", "from_store", metavar="NAME:TAG",
              help="Bundle a model already in an Ollama store instead of an export folder.")
@click.option("--store", type=click.Path(path_type=Path, file_okay=False),
              help="With --from-store: the Ollama model folder (default: $OLLAMA_MODELS or ~/.ollama/models).")
def bundle_command(output_dir: Path | None, out: Path, from_store: str | None, store: Path | None) -> None:
    """Pack an export folder (or, with --from-store, a stored model) into one file for an offline host."""
    from ..ollama.bundle import bundle_from_store, make_bundle

    if (output_dir is None) == (from_store is None):
        raise InputError("give either OUTPUT_DIR or --from-store NAME:TAG", "e.g. `localserve bundle exports/demo -o demo.tar`")
    if output_dir is not None and store is not None:
        raise InputError(f"--store {store} names where --from-store finds a model, and OUTPUT_DIR {output_dir} is an "
                         "export folder", "drop --store, or bundle a stored model with --from-store NAME:TAG --store DIR")
    r = bundle_from_store(from_store, out, store) if from_store else make_bundle(output_dir, out)
    click.echo(f"wrote {r.path} ({_size(r.size)}): {', '.join(r.files)}")
    click.echo(f"install offline: localserve install {r.path.name} [--store DIR]")


@click.command("install")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--runtime", type=click.Choice(["ollama", "lmstudio", "jan"]), default="ollama", show_default=True,
              help="Where to install: Ollama (SOURCE a bundle), or LM Studio / Jan (SOURCE an export folder: its GGUF "
                   "is placed where the app looks, hard-linked when it can be).")
@click.option("--dir", "folder", type=click.Path(path_type=Path, file_okay=False),
              help="With --runtime lmstudio: LM Studio's models folder (default: its settings' downloadsFolder, else "
                   "~/.lmstudio/models); jan: Jan's data folder (default: ~/.local/share/Jan/data).")
@click.option("--name", help="NAME:TAG to create (default: <bundle name>:<quant>); for LM Studio the model folder, "
                             "for Jan the model id.")
@click.option("--quant", help="Which quant in the bundle or export (default: the first listed).")
@_host
@_store
def install_command(source: Path, runtime: str, folder: Path | None, name: str | None, quant: str | None,
                    host: str | None, store: str | None) -> None:
    """Install SOURCE: a bundle into Ollama (verifying its checksums; through a running Ollama, or written into
    --store), or an export folder into LM Studio or Jan (--runtime)."""
    if runtime != "ollama":
        from ..runtimes.apps import install

        if host or store is not None:
            raise InputError(f"--{'host' if host else 'store'} names an Ollama, and --runtime is {runtime}",
                             f"drop it, or pass --dir for {runtime}'s folder")
        r = install(runtime, source, folder, name=name, quant=quant)
        click.echo(f"installed {r.model} for {runtime}: {r.gguf} ({r.how})")
        if r.config is not None:
            click.echo(f"  {r.config}")
        for note in r.notes:
            click.echo(f"  {note}")
        return
    from ..ollama.bundle import install_bundle

    bundle = source
    if folder is not None:
        raise InputError("--dir is LM Studio's or Jan's folder", "for Ollama pass --store DIR")
    if bundle.is_dir():
        raise InputError(f"{bundle} is a folder; Ollama installs a bundle file",
                         f"make one with `localserve bundle {bundle} -o model.tar`, or register the export: "
                         f"`localserve register {bundle}`")
    if host and store is not None:
        raise InputError("--host and --store name two different places", "pass one of them")
    r = install_bundle(bundle, name=name, host=host, store_root=store or None, use_store=store is not None,
                       quant=quant)
    click.echo(f"installed {r.name} into {'the Ollama store' if r.target == 'store' else 'Ollama at'} {r.where}")
    if r.target == "store":
        click.echo("a running Ollama sees it now (no restart); the store must be readable by the user Ollama runs as")


@click.command("verify")
@click.argument("name")
@_host
@click.option("--client", "clients", multiple=True, help="Only these clients (langchain, ollama, openai).")
@click.option("--json-schema", "json_schema", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Also ask each client for one answer constrained to this JSON Schema (Ollama's format, "
                   "/v1 response_format); it must parse and validate.")
@_json
def verify_command(name: str, host: str | None, clients: tuple[str, ...], json_schema: Path | None,
                   as_json: bool) -> None:
    """Chat with NAME through LangChain's ChatOllama, the ollama client and the openai client (/v1)."""
    from ..errors import OllamaError
    from ..ollama.verification import read_json_schema, verify

    schema = read_json_schema(json_schema) if json_schema is not None else None
    report = verify(name, host=host, clients=clients or None, json_schema=schema)
    if as_json:
        clients = [{"client": c.client, "ok": c.ok, "problem": c.problem, "ttft_s": c.ttft_s,
                    "tokens_per_s": c.tokens_per_s, "turns": [t.__dict__ for t in c.turns],
                    "json_answer": c.structured.__dict__ if c.structured else None} for c in report.clients]
        click.echo(json.dumps({"model": report.model, "host": report.host, "ok": report.ok,
                               "server_version": report.server_version,
                               "prompt_path": report.prompt_path.to_json() if report.prompt_path else None,
                               "clients": clients}, indent=2))
    else:
        if report.prompt_path is not None:
            click.echo(f"prompt: {report.prompt_path.description} (Ollama {report.server_version})")
        for c in report.clients:
            mark = "ok  " if c.ok else "FAIL"
            click.echo(f"{mark} {c.client:<10} first token {c.ttft_s:.2f}s  {c.tokens_per_s:.1f} tokens/s"
                       + (f"  {c.problem}" if c.problem else ""))
            for t in c.turns:
                click.echo(f"       > {t.prompt}\n       < {t.reply.strip()[:200]}  [{t.finish_reason}]")
            if c.structured is not None:
                verdict = "valid" if c.structured.ok else c.structured.problem
                click.echo(f"       json< {c.structured.reply.strip()[:200]}  [{c.structured.finish_reason}] {verdict}")
    if not report.ok:
        bad = ", ".join(c.client for c in report.clients if not c.ok)
        raise OllamaError(f"verify {report.model} failed through {bad}",
                          "see the lines above; a reply that does not stop usually means a wrong TEMPLATE or stop list")


commands = [register_command, ls_command, show_command, rm_command, bundle_command, install_command, verify_command]
