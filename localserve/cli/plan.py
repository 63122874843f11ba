"""`localserve plan`, `bench` and `cost`: capacity and cost planning (library: localserve.plan)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import InputError
from ..plan import Assumptions, BenchSpec, CostSpec, Overhead, PlanSpec, bench, cost, plan
from ..plan.memory import MIB, gib


def _csv(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _echo_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


@click.command("plan")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--quant", "quants", help="Quants to plan, comma-separated (e.g. Q4_K_M,Q8_0). A GGUF's own quant is always exact.")
@click.option("--ctx", type=int, help="Context length per sequence, in tokens (default: the model's trained context, "
                                    "at most 8192; above it is refused).")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Sequences served at once (each with its own KV cache).")
@click.option("--kv-cache-type", default="f16", show_default=True, help="KV cache element type: f16, q8_0, q4_0, ...")
@click.option("--device", "devices", help="Devices to check, comma-separated (default: the whole table and this machine).")
@click.option("--devices", "devices_file", type=click.Path(exists=True, path_type=Path), envvar="LOCALSERVE_DEVICES",
              help="Your own device table (JSON, same shape as localserve/data/devices.json).")
@click.option("--overhead-mib", type=float, default=512, show_default=True, help="Runtime overhead, fixed part (MiB).")
@click.option("--overhead-pct", type=float, default=10, show_default=True, help="Runtime overhead, % of weights + KV cache.")
@click.option("--vllm-gpu", default="L4,A100-80GB,H100-80GB", show_default=True, help="GPUs to lay out vLLM on, comma-separated.")
@click.option("--gpus-per-node", type=int, default=8, show_default=True)
@click.option("--nodes", type=int, default=1, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
def plan_cmd(model, quants, ctx, concurrency, kv_cache_type, devices, devices_file, overhead_mib, overhead_pct,
             vllm_gpu, gpus_per_node, nodes, as_json):
    """Memory per quant (weights + KV cache + overhead), which devices fit, and the vLLM layout."""
    spec = PlanSpec(model=model, quants=_csv(quants), ctx=ctx, concurrency=concurrency, cache_type=kv_cache_type,
                    devices=_csv(devices), devices_file=devices_file,
                    overhead=Overhead(int(overhead_mib * MIB), overhead_pct / 100), vllm_gpus=_csv(vllm_gpu),
                    gpus_per_node=gpus_per_node, nodes=nodes)
    result = plan(spec)
    if as_json:
        _echo_json(result.to_json())
        return
    s = result.model.shape
    click.echo(f"{s.name}: {s.architecture}, {s.n_layers} layers, {s.n_heads} attention heads / {s.n_kv_heads} KV heads, "
               f"head dim {s.key_length}; planned for {result.spec.ctx} ctx x {concurrency} sequence(s), "
               f"KV cache {kv_cache_type}")
    for q in result.quants:
        e = q.estimate
        click.echo(f"\n{e.quant} ({'exact' if e.weights.exact else 'estimated'}): {gib(e.total_bytes)}")
        for line in e.lines(s):
            click.echo(f"  {line}")
        if q.quality:
            r = q.quality
            click.echo(f"  measured quality (localserve quality): mean KL {r.get('kl_mean', float('nan')):.4f} nats, "
                       f"top-1 agreement {r.get('top1', float('nan')):.1%}, perplexity x{r.get('ppl_ratio', float('nan')):.3f}")
        for status, label in (("fits", "fits"), ("partial", "partial GPU offload"), ("no", "does not fit")):
            group = [f for f in q.fits if f.status == status]
            if not group:
                continue
            if status == "partial":
                click.echo(f"  {label}:")
                for f in group:
                    click.echo(f"    {f.device.name}: {f.describe()}")
            else:
                click.echo(f"  {label}: " + ", ".join(f"{f.device.name} ({gib(f.device.usable_bytes)})" for f in group))
    click.echo(f"\nvLLM ({gpus_per_node} GPU(s) per node x {nodes} node(s), 16-bit weights):")
    for v in result.vllm:
        if v.layout:
            click.echo(f"  {v.gpu}: --tensor-parallel-size {v.layout.tensor_parallel_size} "
                       f"--pipeline-parallel-size {v.layout.pipeline_parallel_size}")
            for line in v.layout.lines:
                click.echo(f"    {line}")
        else:
            click.echo(f"  {v.gpu}: refused: {v.refused}")
    if result.measurements:
        click.echo("\nmeasured on this machine (localserve bench):")
        for m in result.measurements:
            b = m.result
            click.echo(f"  {m.model_file} on {m.target}, {m.measured_at}: TTFT {b['ttft_s'] * 1000:.0f} ms, prompt "
                       f"{b.get('prompt_tokens_per_s') or 0:.0f} tokens/s, decode {b['decode_tokens_per_s']:.1f} tokens/s"
                       f" ({m.source.name})")
    click.echo(f"\ndevice figures dated {', '.join(result.table_dates)} (localserve/data/devices.json"
               f"{' + ' + str(devices_file) if devices_file else ''}); runtime overhead: {spec.overhead.describe()}, "
               "set with --overhead-mib/--overhead-pct")


@click.command("bench")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--target", type=click.Choice(["llama.cpp", "ollama", "vllm", "llama-server", "lmstudio", "jan"]),
              default="llama.cpp", show_default=True)
@click.option("--concurrency", type=int, default=4, show_default=True, help="N requests for the N-request throughput.")
@click.option("--prompt-tokens", type=int, default=128, show_default=True)
@click.option("--max-tokens", type=int, default=64, show_default=True, help="New tokens per request.")
@click.option("--url", help="Server base URL for a server target (loopback only; default per target: Ollama 11434, "
                            "vLLM 8000, llama-server 8080, LM Studio 1234, Jan 1337).")
@click.option("--served-name", help="The model's name on the server (default: from localserve.json or the file name).")
@click.option("--threads", type=int, help="CPU threads for llama.cpp (default: llama.cpp's choice).")
@click.option("--no-store", is_flag=True, help="Do not write <model>.bench.json / localserve.json.")
@click.option("--json", "as_json", is_flag=True)
def bench_cmd(model, target, concurrency, prompt_tokens, max_tokens, url, served_name, threads, no_store, as_json):
    """Measure TTFT, prompt and decode tokens/s on this machine; store them next to the model."""
    result = bench(BenchSpec(model=model, target=target, concurrency=concurrency, prompt_tokens=prompt_tokens,
                             max_tokens=max_tokens, url=url, served_name=served_name, n_threads=threads,
                             store=not no_store))
    if as_json:
        _echo_json(result)
        return
    c = result["concurrent"]
    click.echo(f"{result['model_file']} on {target} ({result['machine']['cpu']}, {result['measured_at']}):")
    click.echo(f"  time to first token   {result['ttft_s'] * 1000:.0f} ms ({prompt_tokens}-token prompt)")
    pp = result.get("prompt_tokens_per_s")
    click.echo(f"  prompt processing     {pp:.0f} tokens/s" if pp else "  prompt processing     n/a")
    click.echo(f"  decode, 1 request     {result['decode_tokens_per_s']:.1f} tokens/s")
    click.echo(f"  decode, {c['requests']} requests    {c['aggregate_output_tokens_per_s']:.1f} tokens/s aggregate "
               f"({c.get('label', c.get('mode', '?'))})")
    click.echo(f"  measured as: {c['how']}")
    for note in result.get("notes", []):
        click.echo(f"  note: {note}")
    for path in result.get("stored_in", []):
        click.echo(f"stored in {path}")


@click.command("cost")
@click.option("--tokens-per-day", default="20M", show_default=True, help="Volume, e.g. 500K, 20M, 1.5B.")
@click.option("--gpu", help="The rented GPU (a name from the device table).")
@click.option("--price", help="Its hourly price in USD, e.g. 1.10/h.")
@click.option("--gpus", type=int, default=None, help="GPUs per vLLM replica (default: the vLLM layout for --model, else 1).")
@click.option("--ctx", type=int, default=4096, show_default=True, help="Context per sequence, for the vLLM layout of --model.")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Sequences at once, for the vLLM layout of --model.")
@click.option("--api", default="gpt-4o-mini", show_default=True, help="Hosted API model to compare with.")
@click.option("--api-input-price", type=float, help="Override its input price, USD per 1M tokens.")
@click.option("--api-output-price", type=float, help="Override its output price, USD per 1M tokens.")
@click.option("--tokens-per-s", type=float, help="Self-hosted throughput per replica (default: measured by bench).")
@click.option("--model", type=click.Path(exists=True, path_type=Path), help="A benchmarked GGUF or export folder.")
@click.option("--utilisation", type=float, default=0.5, show_default=True, help="Share of rented hours the GPU is busy.")
@click.option("--input-share", type=float, default=0.75, show_default=True, help="Share of tokens that are input.")
@click.option("--eng-hours", type=float, default=8, show_default=True, help="Engineering hours per month to run vLLM.")
@click.option("--eng-rate", type=float, default=100, show_default=True, help="USD per engineering hour.")
@click.option("--local-watts", type=float, default=0, help="This machine's power under load (W).")
@click.option("--kwh-price", type=float, default=0, help="Electricity price, USD per kWh.")
@click.option("--private", is_flag=True, help="Prompts must not leave your infrastructure.")
@click.option("--air-gapped", is_flag=True, help="No network at all where it runs.")
@click.option("--frontier", is_flag=True, help="Frontier-model quality is required.")
@click.option("--development", is_flag=True, help="For development, not production traffic.")
@click.option("--tenants", type=int, default=1, show_default=True, help="Tenants, each with its own LoRA adapter.")
@click.option("--adapter", type=click.Path(exists=True, path_type=Path), help="One tenant's adapter (sized from its files).")
@click.option("--devices", "devices_file", type=click.Path(exists=True, path_type=Path), envvar="LOCALSERVE_DEVICES")
@click.option("--prices", "prices_file", type=click.Path(exists=True, path_type=Path), envvar="LOCALSERVE_PRICES",
              help="Your own API price table (JSON, same shape as localserve/data/api_prices.json).")
@click.option("--chart", type=click.Path(path_type=Path),
              help="Where to write the PNG chart (default: next to --model, else ./localserve-cost.png).")
@click.option("--no-chart", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
def cost_cmd(tokens_per_day, gpu, price, gpus, ctx, concurrency, api, api_input_price, api_output_price, tokens_per_s, model,
             utilisation, input_share, eng_hours, eng_rate, local_watts, kwh_price, private, air_gapped, frontier,
             development, tenants, adapter, devices_file, prices_file, chart, no_chart, as_json):
    """API vs vLLM vs Ollama: cost per 1M tokens, per month, the crossover and a decision."""
    if gpu and price is None:
        raise InputError(f"no hourly price for {gpu}", "pass --price, e.g. --price 1.10/h (rental prices are not guessed)")
    if chart is not None and no_chart:
        raise InputError(f"--chart {chart} asks for the chart, and --no-chart for none", "drop one of them")
    if gpus is None:
        gpus = _layout_gpus(model, gpu, devices_file, ctx, concurrency) if model and gpu else 1
    if chart is None and not no_chart:
        chart = model.with_name(model.name + ".cost.png") if model and model.is_file() else \
            (model / "cost.png" if model else Path("localserve-cost.png"))
    report = cost(CostSpec(
        tokens_per_day=tokens_per_day, gpu=gpu, price_per_hour=price, gpus_per_replica=gpus, api=api,
        api_input_price=api_input_price, api_output_price=api_output_price, tokens_per_s=tokens_per_s, model=model,
        assumptions=Assumptions(utilisation=utilisation, input_share=input_share, eng_hours_per_month=eng_hours,
                                eng_rate_per_hour=eng_rate, local_watts=local_watts, kwh_price=kwh_price),
        private=private, air_gapped=air_gapped, frontier=frontier, development=development, tenants=tenants,
        adapter=adapter, devices_file=devices_file, prices_file=prices_file, chart=None if no_chart else chart))
    if as_json:
        _echo_json(report.to_json())
        return
    click.echo(f"at {report.spec.tokens_per_day:,.0f} tokens/day:")
    for o in report.options:
        per_1m = "n/a" if o.per_1m is None else f"${o.per_1m:.4g}"
        monthly = "over capacity" if o.monthly is None else f"${o.monthly:,.2f}"
        click.echo(f"  {o.label:<40} {per_1m:>10} per 1M tokens   {monthly:>14} per month")
        for note in o.notes:
            click.echo(f"      {note}")
    click.echo(f"crossover: {report.crossover_note}")
    click.echo(f"decision: {report.decision_label}")
    for r in report.reasons:
        click.echo(f"  - {r}")
    if report.tenancy:
        click.echo("multi-tenant LoRA:")
        for key, value in report.tenancy.items():
            if value is not None:
                shown = gib(value) if key.endswith("_bytes") else (f"${value:,.2f}" if key.startswith("monthly") else value)
                click.echo(f"  {key}: {shown}")
    click.echo("assumptions:")
    for a in report.assumptions:
        click.echo(f"  - {a}")
    click.echo("data dated: " + "; ".join(f"{table} {value}" for table, value in report.data_dates.items()))
    if report.chart:
        click.echo(f"chart: {report.chart}")


def _layout_gpus(model: Path, gpu: str, devices_file: Path | None, ctx: int, concurrency: int) -> int:
    """GPUs per replica from the shared vLLM layout (one node of 8 GPUs at most)."""
    from ..plan.layout import parallel_layout
    from ..plan.model import load_model
    from ..plan.tables import device

    d = device(gpu, devices_file)
    layout = parallel_layout(load_model(model), d.memory_bytes, 8, 1, ctx, concurrency)
    return layout.gpus


commands = [plan_cmd, bench_cmd, cost_cmd]
