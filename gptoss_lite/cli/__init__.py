"""The `gptoss-lite` command: a thin click shell over the Python API.

Each command lives in its own module of this package and is registered below. A `GptossError`
raised anywhere becomes one line on stderr and exit status 1; Ctrl-C exits with 130.
"""

from __future__ import annotations

import sys

import click

from ..errors import GptossError
from .host import release_freed_memory


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


# Commands register here, one line each.
from .plan import plan  # noqa: E402

main.add_command(plan)
from .synth import synth  # noqa: E402

main.add_command(synth)
from .quantize import quantize  # noqa: E402

main.add_command(quantize)
from .quant_error import quant_error  # noqa: E402

main.add_command(quant_error)
from .bench import bench_command  # noqa: E402

main.add_command(bench_command, name="bench")
from .run import run  # noqa: E402

main.add_command(run)
from .chat import chat  # noqa: E402

main.add_command(chat)
from .profile import profile  # noqa: E402

main.add_command(profile)
from .serve import serve  # noqa: E402

main.add_command(serve)
