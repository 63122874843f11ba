"""Golden `--help` of every command (tests/golden/help/), reviewed in diffs: a flag, its help or its
default changes only on purpose. Regenerate after an intended change with LOCALSERVE_UPDATE_GOLDEN=1."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from localserve.cli import cli

GOLDEN = Path(__file__).parent / "golden" / "help"


def _commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found += _commands(command, prefix + (name,))
        else:
            found.append(prefix + (name,))
    return found


COMMANDS = _commands(cli)


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "localserve")
def test_help_matches_its_golden(path):
    # A fixed width: click wraps help to the terminal, and goldens must not depend on it.
    result = CliRunner().invoke(cli, [*path, "--help"], terminal_width=100, prog_name="localserve")
    assert result.exit_code == 0, result.output
    golden = GOLDEN / ("-".join(("localserve",) + path) + ".txt")
    if os.environ.get("LOCALSERVE_UPDATE_GOLDEN"):
        golden.write_text(result.output, encoding="utf-8")
    assert golden.is_file(), f"no golden for {' '.join(path)}: run with LOCALSERVE_UPDATE_GOLDEN=1 and review it"
    assert result.output == golden.read_text(encoding="utf-8")


def test_every_golden_belongs_to_a_command():
    names = {"-".join(("localserve",) + p) + ".txt" for p in COMMANDS}
    stale = sorted(p.name for p in GOLDEN.glob("*.txt") if p.name not in names)
    assert not stale, f"goldens of commands that no longer exist: {stale}"
