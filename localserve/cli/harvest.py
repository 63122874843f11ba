"""Feedback from the shell, and harvest: what the router captured becomes data (see localserve.loop)."""

from __future__ import annotations

import json
from pathlib import Path

import click

_json = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


@click.command("feedback")
@click.argument("request_id")
@click.option("--score", type=float, required=True, help="The user's satisfaction (e.g. 1 good, 0 or -1 bad, or 1-5).")
@click.option("--correction", metavar="TEXT",
              help="The answer that should have been given (needs the experiment's capture; see `ab start --capture`).")
@click.option("--label", metavar="TEXT", help="A label for the failure (e.g. wrong-fact), kept with the capture.")
@_json
def feedback_command(request_id: str, score: float, correction: str | None, label: str | None, as_json: bool) -> None:
    """Record feedback on the answer REQUEST_ID (its X-Request-Id), as POST /feedback does; the router may be
    running or not."""
    from ..loop.capture import feedback

    done = feedback(request_id, score, correction, label)
    if as_json:
        click.echo(json.dumps(done, indent=2))
        return
    extra = " with a correction" if correction is not None else ""
    click.echo(f"{done['experiment']}: feedback {score:g}{extra} on request {request_id}")


@click.command("harvest")
@click.argument("name")
@click.option("--data", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Write the corrected failures here as chat JSONL ({\"messages\": [...]}, the correction as the "
                   "assistant's turn).")
@click.option("--review", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the failures without a correction here, for review (default: DATA's name + .review.jsonl).")
@click.option("--suite", type=click.Path(path_type=Path, dir_okay=False),
              help="Also add the corrected failures to this promptfoo suite (.yaml; created or grown) for the gate.")
@click.option("--since", metavar="DURATION", help="Only conversations of the last DURATION (e.g. 7d); default: every "
                                                  "one retention kept.")
@click.option("--where", "where", default=None, metavar="CONDITION",
              help="Which captured requests are failures, in ab decide's condition language over a request's "
                   "fields: feedback, latency, ttft, status, prompt_tokens, completion_tokens, response_chars, "
                   "finish_reason, error, arm, route, correction, label; with and, or, not. Default: "
                   "\"correction or feedback < 0 or finish_reason = length or error\".")
@_json
def harvest_command(name: str, data: Path, review: Path | None, suite: Path | None, since: str | None,
                    where: str | None, as_json: bool) -> None:
    """Turn what the router of NAME captured into training data: corrected failures into DATA (deduplicated by
    normalized prompt, the latest correction kept), the others into a review file, never into DATA."""
    from ..loop.harvest import DEFAULT_WHERE, HarvestSpec, harvest
    from ..router.drift import parse_duration

    spec = HarvestSpec(name, data, review, suite, parse_duration(since) if since else None, where or DEFAULT_WHERE)
    result = harvest(spec)
    if as_json:
        click.echo(json.dumps(result.to_json(), indent=2))
        return
    click.echo(f"{result.name}: {result.considered} captured, {result.matched} matched --where")
    click.echo(f"  harvested {result.harvested} into {result.files['data']} ({result.deduplicated} deduplicated)")
    click.echo(f"  to review {result.to_review} in {result.files['review']}")
    click.echo(f"  skipped {result.skipped} (not a chat ending with the user's turn)")
    if suite is not None:
        click.echo(f"  suite: {result.suite_cases} new cases in {suite}")


commands = [feedback_command, harvest_command]
