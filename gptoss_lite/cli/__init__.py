"""The `gptoss-lite` command: a thin click shell over the Python API.

Each command lives in its own module of this package and is registered from `COMMANDS` below,
which also lets every option come from its GPTOSS_LITE_* environment variable
(`options.with_environment`). A `GptossError` raised anywhere becomes one line on stderr and
exit status 1; Ctrl-C exits with 130.
"""

from __future__ import annotations

import sys

import click

from ..errors import GptossError
from .bench import bench_command
from .chat import chat
from .host import release_freed_memory
from .options import with_environment
from .plan import plan
from .profile import profile
from .quant_error import quant_error
from .quantize import quantize
from .run import run
from .serve import serve
from .synth import synth

COMMANDS = [run, chat, serve, plan, profile, bench_command, synth, quantize, quant_error]


class _Group(click.Group):
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


for _command in COMMANDS:
    main.add_command(with_environment(_command))
