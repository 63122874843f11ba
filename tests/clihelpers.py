"""What the CLI tests share: run a command, and check that an error is one clear line."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from localserve.cli import cli


def run_cli(*args: str):
    """The command's result; an exception the CLI did not map is raised, not hidden."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def invoke(*args):
    """The command's result as a user would see it (unmapped exceptions become exit 1 too)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


def assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def chat_jsonl(path: Path) -> Path:
    from tinymodel import WORDS

    records = [{"messages": [{"role": "user", "content": " ".join(WORDS[i:i + 6])},
                             {"role": "assistant", "content": " ".join(reversed(WORDS[i:i + 9]))}]}
               for i in range(0, 20, 2)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
