"""The `gptoss-lite` command: a thin click shell over the Python API.

Each command lives in its own module of this package, named in `COMMANDS` below and imported
only when that command runs (so `plan` never imports the server, transformers or `quantize`).
Every option of a command can also come from its GPTOSS_LITE_* environment variable
(`options.with_environment`). A `GptossError` raised anywhere becomes one line on stderr and
exit status 1; Ctrl-C exits with 130.
"""

from __future__ import annotations

import importlib
import sys

import click

from ..errors import GptossError
from .host import release_freed_memory

COMMANDS = {  # command name: (module of this package, the click command in it)
    "run": ("run", "run"),
    "chat": ("chat", "chat"),
    "serve": ("serve", "serve"),
    "plan": ("plan", "plan"),
    "profile": ("profile", "profile_command"),
    "bench": ("bench", "bench_command"),
    "synth": ("synth", "synth"),
    "quantize": ("quantize", "quantize"),
    "quant-error": ("quant_error", "quant_error"),
}


def load_command(name: str) -> click.Command:
    """The command `name` of `COMMANDS`, its module imported now, its options reading the
    environment."""
    from .options import with_environment

    module, attribute = COMMANDS[name]
    return with_environment(getattr(importlib.import_module(f"{__name__}.{module}"), attribute))


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return load_command(cmd_name) if cmd_name in COMMANDS else None

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GptossError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gptoss-lite")
def main() -> None:
    """Run gpt-oss locally with its MoE experts kept in native MXFP4."""
    release_freed_memory()
