"""The `localserve` command: a thin click layer over the library.

Each module in this package exposes `commands` (a list of click commands); they are collected here,
so adding a command group is adding a file. Library errors become one line and an exit code here,
and only here.
"""

from __future__ import annotations

import importlib
import logging
import os
import pkgutil
import sys

import click

from ..errors import InputError, LocalserveError, Terminated
from ..progress import set_debug, set_quiet


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except LocalserveError as e:
            if _debug(ctx):
                raise
            click.echo(f"error: {e}", err=True)
            ctx.exit(e.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: nothing half-written was left behind", err=True)
            ctx.exit(130)
        except Terminated:
            click.echo("terminated: nothing half-written was left behind", err=True)
            ctx.exit(143)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except Exception as e:  # a bug or an input no check foresaw: still one line, the traceback on request
            if _debug(ctx):
                raise
            where = e.__traceback__
            while where is not None and where.tb_next is not None:
                where = where.tb_next
            at = f" at {where.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{where.tb_lineno}" if where else ""
            click.echo(f"error: unexpected {type(e).__name__}{at}: {e} (rerun with --debug for the traceback, "
                       "and report it)", err=True)
            ctx.exit(1)


def _debug(ctx: click.Context) -> bool:
    return bool(ctx.find_root().obj and ctx.find_root().obj.get("debug"))


def _set_quiet(ctx: click.Context, _param, value: bool) -> None:
    if value:
        set_quiet(True)


def _set_debug(ctx: click.Context, _param, value: bool) -> None:
    if value:
        ctx.find_root().ensure_object(dict)["debug"] = True
        set_debug(True)


def _with_global_options(command: click.Command) -> None:
    """`--quiet` and `--debug` after the subcommand too (`localserve export A --quiet`), not only before it."""
    command.params += [
        click.Option(["--quiet", "-q"], is_flag=True, expose_value=False, callback=_set_quiet,
                     help="No progress bars or step messages."),
        click.Option(["--debug"], is_flag=True, expose_value=False, callback=_set_debug,
                     help="Show tracebacks instead of one-line errors."),
    ]
    _refuse_repeated_options(command)
    for sub in getattr(command, "commands", {}).values():
        _with_global_options(sub)


def _refuse_repeated_options(command: click.Command) -> None:
    """An option given twice is refused, naming both values: click would keep the last one silently
    (`--quant Q4_K_M --quant Q8_0` exporting Q8_0 alone), and `--smoke --no-smoke` contradicts itself."""
    parse = command.parse_args

    def parse_args(ctx: click.Context, args: list[str]) -> list[str]:
        given: dict[str, list[str]] = {}
        spellings = {name: param for param in command.params if isinstance(param, click.Option)
                     and not param.multiple and not param.count and (not param.is_flag or param.secondary_opts)
                     for name in (*param.opts, *param.secondary_opts)}
        for i, arg in enumerate(args):
            if arg == "--":
                break
            name, eq, value = arg.partition("=")
            param = spellings.get(name)
            if param is not None:
                shown = name if param.is_flag else f"{name} {value if eq else (args[i + 1] if i + 1 < len(args) else '')}"
                given.setdefault(param.name, []).append(shown.strip())
        for uses in given.values():
            if len(uses) > 1:
                raise InputError(f"{' and '.join(uses)}: the option is given {len(uses)} times",
                                 "give it once (several quants are one list: --quant Q4_K_M,Q8_0)"
                                 if uses[0].startswith("--quant ") else "give it once")
        return parse(ctx, args)

    command.parse_args = parse_args


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
    set_debug(debug)  # every invocation sets both switches: nothing carries over from an earlier one


def _collect() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if mod.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for command in getattr(module, "commands", []):
            _with_global_options(command)
            cli.add_command(command)


_collect()


def _terminate(signum, frame) -> None:
    raise Terminated()


def _redeliver_stops(unraisable) -> None:
    """A Ctrl-C or SIGTERM that lands inside a finalizer or callback is printed and dropped by Python,
    and the run would go on to the end as if never stopped: send the signal again, to the main flow."""
    import signal
    import threading

    if isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
        signum = signal.SIGINT if isinstance(unraisable.exc_value, KeyboardInterrupt) else signal.SIGTERM
        # From another thread, a moment later: signal.raise_signal (or _thread.interrupt_main) would run the
        # handler at once, inside this hook, where its exception is dropped again.
        threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
        return
    sys.__unraisablehook__(unraisable)


def main() -> None:
    import signal

    # Ctrl-C stops a run even when it was started with SIGINT ignored, as a shell without job control
    # starts `localserve ... &`: Python then keeps the inherited SIG_IGN, and a `kill -INT` of the
    # process group (a terminal's Ctrl-C, once the job is brought back) would be lost — the export
    # ran to the end and exited 0. The children we start get the default action back at exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    sys.unraisablehook = _redeliver_stops
    cli(prog_name="localserve")


if __name__ == "__main__":
    sys.exit(main())
