"""``sparekit`` command line: one group, sub-commands loaded lazily so ``--help`` is instant.

Each concern owns one module in this folder exposing a click command; add it to
``COMMANDS``. User errors (:class:`~sparekit.errors.SparekitError`, and click's usage errors such
as an option out of range) print one line to stderr and exit with status 2; no traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

import click

from sparekit.errors import SparekitError
from sparekit.utils.guards import SmallDataWarning

# command name -> (module, attribute, one-line help shown by `sparekit --help`)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "info": ("sparekit.cli.basic", "info", "Versions, device and where the default model is cached."),
    "ls": ("sparekit.cli.ls", "ls", "A model's blocks, hookable sites and aliases, and the assets shipped for it."),
    "generate": ("sparekit.cli.basic", "generate", "Greedy-generate a continuation of PROMPT."),
    "demo": ("sparekit.cli.demo", "demo", "The main job: answer a conflicting-context question on the default model."),
    "data": ("sparekit.cli.data", "data", "Build and inspect conflict datasets."),
    "eval": ("sparekit.cli.eval", "eval_command", "Evaluate the unsteered model on a conflict dataset."),
    "probe": ("sparekit.cli.probe", "probe", "Fit conflict/source probes on the residual stream, per layer."),
    "detect": ("sparekit.cli.probe", "detect", "Conflict probability and predicted knowledge source for one prompt."),
    "capture": ("sparekit.cli.capture", "capture", "Capture activations of a dataset or corpus to a sharded store."),
    "sae": ("sparekit.cli.sae", "sae", "Train, evaluate, inspect and convert sparse autoencoders."),
    "steer": ("sparekit.cli.steer", "steer", "Steer one question toward the context or the model's memory."),
    "bench": ("sparekit.cli.bench", "bench", "Benchmarks: steering methods side by side."),
    "serve": ("sparekit.cli.serve", "serve", "HTTP server: answers, conflict probability, per-request steering."),
    "export": ("sparekit.cli.export", "export", "Write fitted methods for other tools (llama.cpp control vectors)."),
    "kv": ("sparekit.cli.kv", "kv", "KV-cache compression by key L2 norm: retrieval, perplexity, conflicts."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        try:
            return getattr(importlib.import_module(module), attr)
        except ImportError as exc:  # a missing optional dependency, not an unknown command
            missing = f"pip install {exc.name}" if exc.name else "reinstall sparekit"
            raise SparekitError(f"`sparekit {name}` cannot start: {exc}", missing) from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, _, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


_python_show_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """sparekit's own warnings (too little data, …) as one line, like its errors; others as Python shows them."""
    if issubclass(category, SmallDataWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log progress details to stderr.")
def cli(verbose: bool) -> None:
    """sparekit: detect, predict and steer knowledge conflicts in causal LMs.

    \b
    Layer L is the output of decoder block L (= hidden_states[L+1]).
    The default model is Gemma 3 270M, installed from PyPI; everything runs offline.
    """
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    warnings.showwarning = _show_warning
    if not verbose:  # transformers' own weight-loading bars would bury sparekit's output and errors
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers loads: no import here
        hf_logging = sys.modules.get("transformers.utils.logging")
        if hf_logging is not None:  # already loaded (a caller in this process): switch its bars off directly
            hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    try:
        cli.main(args=argv, standalone_mode=False, prog_name="sparekit")
    except SparekitError as exc:
        click.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.UsageError as exc:  # an option out of range or misspelt: one line too, naming the option
        where = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        click.echo(f"error: {exc.format_message().rstrip('.')}{where}", err=True)
        return 2
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted: rerun the same command to resume", err=True)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
