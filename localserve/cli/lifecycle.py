"""The lifecycle commands: versions, eval, promote, rollback (see localserve.lifecycle)."""

from __future__ import annotations

import json
from pathlib import Path

import click

_host = click.option("--host", help="Ollama server URL (default: $OLLAMA_HOST or http://127.0.0.1:11434).")
_store = click.option("--store", is_flag=False, flag_value="", default=None, metavar="[DIR]",
                      help="Work on Ollama's model folder directly (default DIR: $OLLAMA_MODELS or ~/.ollama/models).")
_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
_decoding = [click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed (decoding is greedy)."),
             click.option("--max-tokens", type=click.IntRange(min=1), default=128, show_default=True,
                          help="Tokens per answer at most.")]


def _with(options):
    def apply(fn):
        for option in reversed(options):
            fn = option(fn)
        return fn
    return apply


@click.command("versions")
@click.argument("name")
@_json
def versions_command(name: str, as_json: bool) -> None:
    """List NAME's versions (NAME:v1, NAME:v2, ...) with their lineage in short."""
    from ..lifecycle.store import VersionStore

    with VersionStore() as store:
        versions = store.versions(name)
        rows = [{**v.to_json(), "registrations": [r.__dict__ | {"manifest": None} for r in store.registrations(v)],
                 "evaluations": store.evaluations(v), "events": store.events(version=v.ref)} for v in versions]
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo(f"no versions of {name} (register an export: `localserve register EXPORT_DIR`)")
        return
    click.echo(f"{'version':<14} {'created':<20} {'adapter':<14} {'artifacts':<22} {'parent':<12} evaluations")
    for v, row in zip(versions, rows):
        adapter = (v.record.adapter.sha256 or "")[:12] if v.record.adapter else (v.record.merge or {}).get("method", "")
        arts = ",".join(a.quant or a.file for a in v.record.artifacts)
        evals = ", ".join(f"{e['passed']}/{e['total']}" for e in row["evaluations"]) or "-"
        click.echo(f"{v.ref:<14} {v.created_at[:19]:<20} {adapter:<14} {arts:<22} {v.parent or '-':<12} {evals}")


@click.command("eval")
@click.argument("suite", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.argument("targets", nargs=-1, required=True)
@_with(_decoding)
@click.option("--html", "html", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a static HTML report: the answers of the targets side by side, failures marked.")
@click.option("--record", is_flag=True, help="Attach each result to its version (targets given as NAME:vN).")
@_host
@_json
def eval_command(suite: Path, targets: tuple[str, ...], seed: int, max_tokens: int, html: Path | None, record: bool,
                 host: str | None, as_json: bool) -> None:
    """Run SUITE (promptfoo YAML, OpenAI-evals JSONL, or probe.json) on every TARGET.

    A TARGET is an adapter folder (on its base, as trained), a merged model folder, a .gguf file, an export
    folder, ollama:NAME, openai:URL#MODEL, or a version NAME:vN (its export's GGUF).
    """
    from ..lifecycle.evaluate import evaluate, format_runs
    from ..lifecycle.report import write_report
    from ..lifecycle.store import VersionStore, parse_version_ref
    from ..lifecycle.suites import load_suite

    loaded = load_suite(suite)
    runs = []
    with VersionStore() as store:
        versions = [_as_version(store, spec) for spec in targets]
        if record:
            for spec, version in zip(targets, versions):
                if version is None:
                    parse_version_ref(spec)  # says how a version is named
        for spec, version in zip(targets, versions):
            resolved = str(version.export_dir) if version else spec
            runs.append(evaluate(loaded, resolved, seed=seed, max_tokens=max_tokens, ollama_host=host, label=spec))
        if record:
            for run, version in zip(runs, versions):
                store.add_evaluation(run, version)
    if html:
        write_report(runs, html)
    if as_json:
        click.echo(json.dumps([r.to_json() for r in runs], indent=2))
        return
    click.echo(format_runs(runs))
    if html:
        click.echo(f"report: {html}")


def _as_version(store, spec: str):
    from ..errors import InputError
    from ..lifecycle.store import parse_version_ref

    if Path(spec).exists() or spec.startswith(("ollama:", "openai:", "store:")):
        return None
    try:
        parse_version_ref(spec)
    except InputError:
        return None
    return store.version(spec)


@click.command("promote")
@click.argument("version")
@click.option("--as", "alias", required=True, help="The alias to point at VERSION, e.g. demo:latest.")
@click.option("--suite", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Gate the promotion: VERSION must score at least as well as the alias's current version on it.")
@click.option("--min-delta", type=float, default=0.0, show_default=True,
              help="With --suite: how much higher than the current version's the score must be.")
@click.option("--require-significant", is_flag=True,
              help="With --suite: the flipped cases must also be significant (exact McNemar p < --alpha).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.05, show_default=True)
@click.option("--note", help="Why (kept in the history).")
@_with(_decoding)
@_host
@_store
@_json
@click.pass_context
def promote_command(ctx: click.Context, version: str, alias: str, suite: Path | None, min_delta: float,
                    require_significant: bool, alpha: float, note: str | None, seed: int, max_tokens: int,
                    host: str | None, store: str | None, as_json: bool) -> None:
    """Point an alias (e.g. demo:latest) at VERSION (e.g. demo:v3), remembering the previous one.

    With --suite the gate decides, evaluating both where they live; a refusal exits 1 with the comparison.
    """
    from ..errors import InputError
    from ..lifecycle.places import open_place
    from ..lifecycle.promotion import promote
    from ..lifecycle.suites import load_suite

    typed = [f"--{name.replace('_', '-')}" for name in ("min_delta", "require_significant", "alpha", "seed",
                                                        "max_tokens")
             if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE]
    if suite is None and typed:
        raise InputError(f"{typed[0]} applies to a gated promotion, and no --suite was given",
                         f"add --suite SUITE, or drop {typed[0]}")
    if "--alpha" in typed and not require_significant:
        raise InputError("--alpha is the significance level of --require-significant, which was not given",
                         "add --require-significant, or drop --alpha")
    r = promote(version, alias, open_place(host, store), suite=load_suite(suite) if suite else None,
                min_delta=min_delta, require_significant=require_significant, alpha=alpha, note=note, seed=seed,
                max_tokens=max_tokens)
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=2))
        return
    click.echo(f"{r.alias} -> {r.version}" + (f" (was {r.previous}; undo: localserve rollback {r.alias})"
                                               if r.previous else ""))
    if r.comparison is not None:
        c = r.comparison
        click.echo(f"score {c.candidate.score:.3f}" + (f" vs {c.champion.score:.3f}" if c.champion else "") +
                   f"; fixed {len(c.fixed)}, broken {len(c.broken)}, McNemar p = {c.p_value:.3g}")


@click.command("rollback")
@click.argument("alias")
@_host
@_store
@_json
def rollback_command(alias: str, host: str | None, store: str | None, as_json: bool) -> None:
    """Point ALIAS back at the exact manifest it had before its last promotion."""
    from ..lifecycle.places import open_place
    from ..lifecycle.promotion import rollback

    r = rollback(alias, open_place(host, store))
    if as_json:
        click.echo(json.dumps(r.to_json(), indent=2))
        return
    click.echo(f"{r.alias} -> {r.version} (rolled back from {r.previous}; digest {r.digest[:19]})")


commands = [versions_command, eval_command, promote_command, rollback_command]
