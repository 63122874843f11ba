"""The A/B commands: ab start/set/stop/report/decide, and drift (see localserve.router)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _traffic_source(command):
    """The options that read the arms' traffic from what the engines publish instead of the router's log."""
    for option in reversed((
            click.option("--metrics", multiple=True, metavar="URL|FILE",
                         help="Read the arms' traffic from vLLM's /metrics at URL (repeat it for every server; "
                              "replicas add up) or from a saved scrape, instead of the router's log."),
            click.option("--since-scrape", multiple=True, metavar="FILE",
                         help="With --metrics: only the traffic since this scrape (saved with "
                              "`curl URL/metrics > FILE`; one per server)."),
            click.option("--spend-logs", type=click.Path(path_type=Path, dir_okay=False),
                         help="Read the arms' traffic from LiteLLM's spend logs exported to FILE (JSON or JSON "
                              "Lines) instead of the router's log."),
            click.option("--arm", "arm_names", multiple=True, metavar="NAME:vN=MODEL",
                         help="With --metrics or --spend-logs: the model name an arm has there (default: its "
                              "model on its OpenAI-compatible server, else NAME-vN as a vLLM export is named; in "
                              "spend logs a model_id equal to NAME:vN, as `ab set --render` writes it)."))):
        command = option(command)
    return command


@click.group("ab")
def ab_group() -> None:
    """A/B test versions on live traffic: a sticky weighted router, its report, and the verdict."""


@ab_group.command("start")
@click.argument("name")
@click.option("--arm", "arms", multiple=True, metavar="NAME:vN=WEIGHT[@RUNTIME:URL#MODEL]",
              help="A version and its weight (the first is the control); @RUNTIME:URL#MODEL for a model on a server "
                   "that speaks OpenAI's API: openai (or vllm), llama-server, lmstudio, jan. Without any, resume the "
                   "experiment NAME.")
@click.option("--port", type=click.IntRange(1, 65535), default=None,
              help="Port on 127.0.0.1 (default 11435, or the resumed experiment's).")
@click.option("--upstream", metavar="URL", help="The Ollama server of the arms and of every request not routed "
                                                "(default: $OLLAMA_HOST or http://127.0.0.1:11434).")
@click.option("--foreground", is_flag=True, help="Serve in this process until Ctrl-C instead of in the background.")
@click.option("--capture/--no-capture", default=None,
              help="Keep each routed conversation (messages or prompt and system, the answer as streamed, arm, "
                   "request id, time) in the state directory, for `localserve harvest`. Off unless given; a resumed "
                   "experiment keeps its setting.")
@click.option("--capture-sample", type=float, default=None, metavar="P",
              help="With --capture: the share of requests kept, decided per request id (default 1).")
@click.option("--redact", multiple=True, metavar="REGEX",
              help="With --capture: replace every match with [REDACTED] before anything is written (repeatable).")
@click.option("--retain", metavar="DURATION", help="With --capture: delete captures older than this, at start and "
                                                   "hourly (default 30d).")
def ab_start(name: str, arms: tuple[str, ...], port: int | None, upstream: str | None, foreground: bool,
             capture: bool | None, capture_sample: float | None, redact: tuple[str, ...], retain: str | None) -> None:
    """Start the router of NAME: clients ask for model NAME and each user gets one arm, by weight."""
    from ..errors import InputError
    from ..router import experiment as ex
    from ..router.capture import CaptureSettings

    given = [flag for flag, value in (("--capture-sample", capture_sample), ("--redact", redact or None),
                                      ("--retain", retain)) if value is not None]
    if given and not capture:
        raise InputError(f"{given[0]} sets how conversations are captured, and capture is off",
                         f"add --capture: localserve ab start {name} --capture {given[0]} ...")
    if capture is None:
        settings = ex.KEEP
    elif capture:
        settings = CaptureSettings.parse(1.0 if capture_sample is None else capture_sample, redact, retain)
    else:
        settings = None

    if foreground:
        from ..router.server import serve

        from ..errors import Terminated

        started = ex.prepare(name, arms, port=port, upstream=upstream, capture=settings)
        click.echo(f"router of {started.name} on {started.url} (Ctrl-C stops it)")
        try:
            serve(started.name)  # uvicorn finishes the requests in flight on Ctrl-C or SIGTERM, then returns
        except (KeyboardInterrupt, Terminated):
            pass
        click.echo(f"router of {started.name} stopped")
        return
    started = ex.start(name, arms, port=port, upstream=upstream, capture=settings)
    shares = ", ".join(f"{v}={s:.0%}" for v, s in started.public()["shares"].items())
    click.echo(f"router of {started.name} on {started.url} (pid {started.pid}): {shares}")
    click.echo(f"  clients: OLLAMA_HOST={started.url}, or OpenAI base_url {started.url}/v1, model {started.name!r}")
    if started.capture:
        from ..router.capture import capture_path

        click.echo(f"  capture on: {started.capture.sample:.0%} of conversations into {capture_path(started.name)}")


@ab_group.command("set")
@click.argument("weights", nargs=-1, required=True, metavar="NAME:vN=WEIGHT... | NAME")
@click.option("--render", "render_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Also write the split for Kubernetes and LiteLLM into DIR: a Gateway API HTTPRoute, an Istio "
                   "VirtualService, a LiteLLM model_list.")
@click.option("--gateway", default="inference-gateway", show_default=True,
              help="With --render: the Gateway the HTTPRoute attaches to.")
def ab_set(weights: tuple[str, ...], render_dir: Path | None, gateway: str) -> None:
    """Change arms' weights at run time (no restart; users move only off an arm that lost weight or onto
    one that gained). With --render DIR alone (ab set NAME --render DIR), only write the files."""
    from ..errors import InputError
    from ..lifecycle.store import parse_version_ref
    from ..router import experiment as ex
    from ..router.arms import parse_weight_changes

    changes = {}
    if len(weights) == 1 and "=" not in weights[0]:
        name = weights[0]
        if render_dir is None:
            raise InputError(f"no weights given for {name}", f"write e.g. localserve ab set {name}:v2=50, "
                                                           "or add --render DIR to write the files only")
    else:
        changes = parse_weight_changes(weights)
        names = {parse_version_ref(v)[0] for v in changes}
        if len(names) != 1:
            raise InputError(f"the weights name versions of {len(names)} models ({', '.join(sorted(names))})",
                             "set the weights of one experiment at a time")
        name = names.pop()
    experiment = ex.set_weights(name, changes) if changes else ex.load(ex.check_name(name))
    shares = ", ".join(f"{v}={s:.0%}" for v, s in experiment.public()["shares"].items())
    click.echo(f"{experiment.name}: {shares}" + ("" if ex.is_running(experiment) or not changes
                                                 else " (the router is stopped: taken when it resumes)"))
    if render_dir is not None:
        from ..router.render import render

        for path in render(experiment, render_dir, gateway):
            click.echo(f"wrote {path}")


@ab_group.command("stop")
@click.argument("name")
def ab_stop(name: str) -> None:
    """Stop the router of NAME (in-flight requests finish; the log and the weights are kept)."""
    from ..router import experiment as ex

    stopped = ex.stop(name)
    click.echo(f"router of {stopped.name} stopped; `localserve ab start {stopped.name}` resumes it")


@ab_group.command("report")
@click.argument("name")
@click.option("--since", metavar="DURATION", help="Only the last DURATION (e.g. 1h, 2d); default: since the start.")
@click.option("--chart", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a PNG: latency distributions and rates per arm, requests and latency over time.")
@_json
def ab_report(name: str, since: str | None, chart: Path | None, as_json: bool) -> None:
    """Per arm: requests, error rate, p50/p95 latency and time to first token, tokens/s, runaway share,
    feedback; each candidate against the control (Fisher's exact test, Mann-Whitney U)."""
    from ..router.drift import parse_duration
    from ..router.log import RequestLog
    from ..router.stats import format_report, report

    from ..router.capture import capture_status, format_capture_status
    from ..router.experiment import load

    start = time.time() - parse_duration(since) if since else None
    with RequestLog() as log:
        r, rows = report(name, since=start, log=log)
        weights = log.weight_history(r.experiment, since=r.since)
        capture = capture_status(load(r.experiment), log, since=r.since)
    if chart:
        from ..router.charts import report_chart

        report_chart(r, rows, chart, weights)
    if as_json:
        click.echo(json.dumps({**r.to_json(), "weight_changes": weights, "capture": capture.to_json(),
                               "chart": str(chart) if chart else None}, indent=2))
        return
    click.echo(format_report(r))
    click.echo(format_capture_status(capture))
    if chart:
        click.echo(f"chart: {chart}")


@ab_group.command("decide")
@click.argument("name")
@click.option("--success", required=True, metavar="CONDITION",
              help="Clauses METRIC OP EXPRESSION joined by 'and'; `control` is the control's value, e.g. "
                   "\"error_rate <= control + 0.01 and p95_latency <= 1.2 * control and feedback >= control\". "
                   "Metrics: requests, error_rate, p50_latency, p95_latency, p50_ttft, p95_ttft, tokens_per_s, "
                   "runaway_rate, empty_rate, feedback.")
@click.option("--min-requests", type=click.IntRange(min=1), default=100, show_default=True,
              help="Requests each of the candidate and the control needs before a verdict.")
@click.option("--candidate", help="The arm to judge (default: the one arm besides the control with traffic).")
@click.option("--suite", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Promote only through the gate on this golden suite too (see `localserve promote --suite`).")
@click.option("--auto", "every", type=click.IntRange(min=1), default=None, metavar="N",
              help="Judge again after every N requests until a verdict is taken or the router stops.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0), default=None,
              help="With --auto: give up after this many seconds.")
@click.option("--dry-run", is_flag=True, help="Show the verdict; promote nothing, change no weight.")
@_traffic_source
@click.option("--over", metavar="DURATION",
              help="With --metrics: scrape, wait DURATION (e.g. 10m), scrape again, and judge the traffic between.")
@_json
def ab_decide(name: str, success: str, min_requests: int, candidate: str | None, suite: Path | None,
              every: int | None, timeout_s: float | None, dry_run: bool, metrics: tuple[str, ...],
              since_scrape: tuple[str, ...], spend_logs: Path | None, arm_names: tuple[str, ...], over: str | None,
              as_json: bool) -> None:
    """Judge the candidate: when CONDITION holds with enough requests, promote it (NAME:latest, through
    the gate) and send it all traffic; when it fails, roll it back to weight 0. Recorded on the version.
    The traffic is the router's log, or what vLLM (--metrics) or LiteLLM (--spend-logs) published."""
    from ..lifecycle.suites import load_suite
    from ..router.decide import decide, decide_auto
    from ..router.drift import parse_duration
    from ..router.sources import make_source

    source = make_source(metrics=metrics, since_scrape=since_scrape, spend_logs=spend_logs, arm_names=arm_names,
                         over_s=parse_duration(over) if over else None)
    loaded = load_suite(suite) if suite else None
    kw = dict(candidate=candidate, min_requests=min_requests, suite=loaded, apply=not dry_run, source=source)

    def show(v) -> None:
        if as_json:
            click.echo(json.dumps(v.to_json(), indent=2, default=str))
            return
        head = {"promote": f"promote {v.candidate}", "rollback": f"roll back {v.candidate}",
                "wait": f"wait ({v.candidate} against {v.control})"}[v.action]
        click.echo(f"{v.experiment}: {head}" + (" [dry run]" if dry_run and v.action != "wait" else ""))
        if source is not None:
            click.echo(f"  measured from {v.report.source}")
        for reason in v.reasons:
            click.echo(f"  {reason}")
        for done in v.applied:
            click.echo(f"  done: {done}")

    if every:
        last = decide_auto(name, success, every=every, on_verdict=show, timeout_s=timeout_s, **kw)
        if last is None:
            click.echo(f"{name}: no verdict (fewer than {every} new requests before the router stopped or the timeout)")
        return
    show(decide(name, success, **kw))


@click.command("drift")
@click.argument("name")
@click.option("--baseline", default="7d", show_default=True, metavar="DURATION",
              help="The baseline window, just before the recent one.")
@click.option("--window", default="1d", show_default=True, metavar="DURATION", help="The recent window, up to now.")
@click.option("--version", help="The version to watch (default: the arm with the most traffic, else NAME:latest).")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01, show_default=True,
              help="Flag a check when its p-value is below this.")
@click.option("--min-requests", type=click.IntRange(min=1), default=30, show_default=True,
              help="Requests each window needs before a check can flag.")
@click.option("--chart", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write a PNG: lengths and latencies baseline against window, shares over time, the golden "
                   "suite over time.")
@click.option("--check", is_flag=True, help="Exit 1 when drift is flagged (for a cron job).")
@click.option("--spend-logs", type=click.Path(path_type=Path, dir_okay=False),
              help="Read the live version's traffic from LiteLLM's spend logs exported to FILE (JSON or JSON Lines) "
                   "instead of the router's log: completion tokens, latency and errors are checked.")
@click.option("--arm", "arm_names", multiple=True, metavar="NAME:vN=MODEL",
              help="With --spend-logs: the model name the version has there (default: a model_id equal to NAME:vN, "
                   "as `ab set --render` writes it).")
@_json
def drift_command(name: str, baseline: str, window: str, version: str | None, alpha: float, min_requests: int,
                  chart: Path | None, check: bool, spend_logs: Path | None, arm_names: tuple[str, ...],
                  as_json: bool) -> None:
    """Has NAME's live version drifted? Its recent traffic in the router's log (or LiteLLM's spend logs)
    against a baseline window (response length: KS test; runaway, empty and error shares: Fisher; latency;
    feedback), and its golden-suite runs over time from the version store."""
    from ..router.drift import drift, format_drift, parse_duration
    from ..router.sources import make_source

    source = make_source(spend_logs=spend_logs, arm_names=arm_names)
    report, base_rows, window_rows = drift(name, version=version, baseline_s=parse_duration(baseline),
                                           window_s=parse_duration(window), alpha=alpha, min_requests=min_requests,
                                           source=source)
    if chart:
        from ..router.charts import drift_chart

        drift_chart(report, base_rows, window_rows, chart)
    if as_json:
        click.echo(json.dumps({**report.to_json(), "chart": str(chart) if chart else None}, indent=2))
    else:
        click.echo(format_drift(report))
        if chart:
            click.echo(f"chart: {chart}")
    if check and report.flagged:
        raise SystemExit(1)


commands = [ab_group, drift_command]
