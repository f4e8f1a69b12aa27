"""The options of the `gptoss-lite` commands: each declared once, each also read from the env.

Options that several commands take (`-m/--model`, `-p/--profile`, `-c/--context`, `--device`,
`--cpu-experts`, `--kv-cache-dtype`, `-g/--geometry`, `--overwrite`, `--parallel`) are declared
here once, so the flags agree from command to command. Every command is registered through
`with_environment` (see `cli/__init__.py`), which gives each of its options the variable
GPTOSS_LITE_<LONG NAME> (`--max-tokens` -> GPTOSS_LITE_MAX_TOKENS), shown in --help: a new
option needs nothing more than its `click.option`. A command pops the options of how a model is
opened out of its keyword arguments as one `ModelOptions` (`take_model_options`).
`@model_options` adds the model, sampling and harmony options of `run` and `chat`, which pop
them as one `Options`: its `Sampling` is checked there, before anything is loaded.
"""

from __future__ import annotations

import datetime
import math
from collections.abc import Callable
from dataclasses import dataclass, fields

import click

from ..chat.harmony import (
    DEFAULT_IDENTITY,
    EFFORTS,
    FUNCTIONS,
    Conversation,
    check_effort,
    read_tools,
)
from ..chat.json_schema import check_schema, read_json
from ..chat.reply_grammar import ANY_OBJECT, ReplyFormat, ToolFormat
from ..config import ModelConfig, preset, preset_names
from ..engine.options import ModelOptions
from ..engine.sampling import Sampling
from ..errors import GptossError
from ..kernels import KERNELS
from ..memory.plan import MAX_DEFAULT_PARALLEL, MIN_SEQUENCE_CONTEXT
from ..memory.profiles import check_device
from ..model.kv_quant import KV_FORMATS, KVDtypes

ENV_PREFIX = "GPTOSS_LITE_"


def env_var(option: click.Option) -> str:
    """The environment variable of an option: GPTOSS_LITE_ and its first long name."""
    long = next(name for name in option.opts if name.startswith("--"))
    return ENV_PREFIX + long[2:].replace("-", "_").upper()


def with_environment(command: click.Command) -> click.Command:
    """Let every option of `command` (and of its subcommands) come from its variable."""
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar is None:
            param.envvar, param.show_envvar = env_var(param), True
    for sub in getattr(command, "commands", {}).values():
        with_environment(sub)
    return command


# ------------------------------------------------------------------ shared by several commands


def model_option(help: str, default: str | None = None, name: str = "model") -> Callable:
    """-m/--model, the checkpoint to use."""
    return click.option(
        "--model", "-m", name, default=default, show_default=default is not None, help=help
    )


def profile_option(default: str | None = None, name: str = "profile") -> Callable:
    """-p/--profile, the memory profile."""
    return click.option(
        "--profile",
        "-p",
        name,
        default=default,
        help="Memory profile: a built-in name, a .toml file or 'auto' (this machine's; the "
        "cpu profile with --device cpu) [default: auto].",
    )


def context_option(help: str, default: int | None = None, min: int = 1) -> Callable:
    """-c/--context, a number of tokens."""
    return click.option(
        "--context",
        "-c",
        type=click.IntRange(min=min),
        default=default,
        show_default=default is not None,
        help=help,
    )


def device_option(help: str = "cpu, cuda or cuda:N [default: the profile's device].") -> Callable:
    """--device, a torch device this machine has (else one error line, before anything runs)."""
    return click.option("--device", default=None, callback=_check_device, help=help)


def _check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        check_device(value)
    return value


class Gib(click.ParamType):
    """An amount of memory in GiB: a finite number above 0 (NaN and inf are one error line)."""

    name = "GiB"

    def convert(self, value, param, ctx):
        try:
            gib = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of GiB", param, ctx)
        if not (math.isfinite(gib) and gib > 0):
            self.fail(f"{value!r} is not a finite number of GiB above 0", param, ctx)
        return gib


def budget_option() -> Callable:
    """--budget, the memory a run may use, replacing the profile's budget."""
    return click.option(
        "--budget",
        type=Gib(),
        default=None,
        metavar="GIB",
        help="Memory the run may use, in GiB, up to the profile's card memory "
        "[default: the profile's budget].",
    )


class Geometry(click.ParamType):
    """A preset geometry name, converted to its `ModelConfig`; a bad name is one error line."""

    name = "geometry"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"[{'|'.join(preset_names())}]"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> ModelConfig:
        return value if isinstance(value, ModelConfig) else preset(str(value))


def geometry_option(help: str, default: str | None = None) -> Callable:
    """-g/--geometry, the preset whose shapes random weights take."""
    return click.option(
        "--geometry",
        "-g",
        type=Geometry(),
        default=default,
        show_default=default is not None,
        help=help,
    )


class KVCacheDtype(click.ParamType):
    """K or K,V storage formats of the KV cache, as `KVDtypes`; a bad one is one error line."""

    name = "kv"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "K[,V]"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> KVDtypes:
        return value if isinstance(value, KVDtypes) else KVDtypes.parse(str(value))


def kv_cache_option() -> Callable:
    """--kv-cache-dtype K[,V], replacing the profile's KV-cache formats."""
    return click.option(
        "--kv-cache-dtype",
        type=KVCacheDtype(),
        default=None,
        help=f"KV-cache storage, K then V ({', '.join(KV_FORMATS)}; e.g. q8 or bf16,q8) "
        "[default: the profile's, bf16].",
    )


def kernels_option(help: str | None = None) -> Callable:
    """--kernels NAME: which implementation runs (`kernels.kernel_functions`)."""
    return click.option(
        "--kernels",
        type=click.Choice(["auto", *KERNELS]),
        default="auto",
        show_default=True,
        help=help
        or "The kernels: auto (the compiled ones where they run), torch, triton, cpu, or "
        "cpu-q8: the compiled CPU kernels with decode reading the attention projections and the "
        "head in int8 (half their bytes; not exact: `quant-error --kernels cpu-q8` measures it).",
    )


class Layers(click.ParamType):
    """A number of layers or "all" (for --cpu-experts)."""

    name = "layers"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[N|all]"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | str:
        if value == "all" or isinstance(value, int):
            return value
        if not str(value).isdigit():
            self.fail(f"{value!r} is not a number of layers or 'all'", param, ctx)
        return int(str(value))


def cpu_experts_option() -> Callable:
    """--cpu-experts N|all, the leading layers whose experts stay in host RAM."""
    return click.option(
        "--cpu-experts",
        type=Layers(),
        default=None,
        help="Keep the experts of the first N layers (or all) in host RAM and run them on the "
        "CPU [default: the profile's, else as few as the GPU needs].",
    )


class Parallel(click.ParamType):
    """A number of sequences decoded together (1 or more), or "auto" (None: the planner's)."""

    name = "parallel"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[N|auto]"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int | None:
        if value is None or value == "auto" or isinstance(value, int):
            return None if value == "auto" else value
        if not str(value).isdigit() or int(str(value)) < 1:
            self.fail(f"{value!r} is not a number of sequences (1 or more) or 'auto'", param, ctx)
        return int(str(value))


def parallel_option(default: str) -> Callable:
    """--parallel N|auto, sequences decoded together, each with its share of the KV cache."""
    return click.option(
        "--parallel",
        type=Parallel(),
        default=default,
        show_default=True,
        help="Requests decoded together, each with a KV cache of its own (the budget split "
        f"evenly); auto: as many as leave each {MIN_SEQUENCE_CONTEXT:,} tokens of context, "
        f"at most {MAX_DEFAULT_PARALLEL}.",
    )


def overwrite_option(what: str) -> Callable:
    """--overwrite, to replace an earlier output."""
    return click.option("--overwrite", is_flag=True, help=f"Replace {what} if it exists.")


def take_model_options(kwargs: dict) -> ModelOptions:
    """Pop the options of how a model is opened (those a command declares) out of its keyword
    arguments."""
    names = [f.name for f in fields(ModelOptions) if f.name in kwargs]
    return ModelOptions(**{name: kwargs.pop(name) for name in names})


# ------------------------------------------------------------------ run and chat


@dataclass(frozen=True)
class Options:
    """The shared options of `run` and `chat`, as click parsed them: the model, how it is opened,
    how every reply is sampled (checked when taken, so a bad value fails before the load) and
    the harmony settings."""

    model: str
    opening: ModelOptions
    sampling: Sampling
    reasoning_effort: str
    system: str | None
    developer: str | None
    tools: str | None
    show_reasoning: bool
    json_schema: str | None
    json_object: bool

    @classmethod
    def take(cls, kwargs: dict) -> Options:
        """Pop the options of `@model_options` out of a command's keyword arguments."""
        model, opening = kwargs.pop("model"), take_model_options(kwargs)
        flags = {name: kwargs.pop(name) for name in SAMPLING_FLAGS}
        sampling = Sampling(max_new_tokens=kwargs.pop("max_tokens"), **flags)
        harmony = {f.name: kwargs.pop(f.name) for f in fields(cls) if f.name in kwargs}
        return cls(model, opening, sampling, **harmony)

    def conversation(self) -> Conversation:
        """An empty conversation with these settings, tools and today's date."""
        return Conversation(
            instructions=self.developer,
            tools=read_tools(self.tools) if self.tools else [],
            reasoning_effort=self.reasoning_effort,
            date=datetime.date.today().isoformat(),
            model_identity=self.system or DEFAULT_IDENTITY,
        )

    def reply_format(self, conversation: Conversation) -> ReplyFormat | None:
        """The format every reply is held to: JSON of the --json-schema file (checked now) or
        any JSON object, calling only the conversation's tools; None without either flag."""
        if self.json_schema and self.json_object:
            raise GptossError("use --json-schema FILE or --json-object, not both")
        if self.json_schema:
            answer = check_schema(read_json(self.json_schema), strict=False)
        elif self.json_object:
            answer = ANY_OBJECT
        else:
            return None
        tools = tuple(ToolFormat(FUNCTIONS + tool.name) for tool in conversation.tools)
        return ReplyFormat(answer=answer, tools=tools)


class Effort(click.ParamType):
    """low, medium or high; anything else is one error line listing them."""

    name = "effort"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"[{'|'.join(EFFORTS)}]"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        return check_effort(str(value))


# The sampling values are plain numbers here: `Sampling` is their one check. --max-tokens is its
# max_new_tokens, the rest (SAMPLING_FLAGS) share its field names.
SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "seed")
_OPTIONS = [
    model_option("Hugging Face repo id or local checkpoint folder.", default="openai/gpt-oss-20b"),
    profile_option(),
    context_option("Context length in tokens [default: the largest that fits the profile]."),
    device_option(),
    budget_option(),
    kv_cache_option(),
    cpu_experts_option(),
    click.option(
        "--max-tokens",
        "-n",
        type=int,
        default=None,
        help="Most tokens per reply [default: until the context is full].",
    ),
    click.option(
        "--temperature",
        "-t",
        type=float,
        default=1.0,
        show_default=True,
        help="Sampling temperature, >= 0; 0 is greedy.",
    ),
    click.option(
        "--top-p",
        type=float,
        default=1.0,
        show_default=True,
        help="Nucleus sampling: keep the tokens within this probability, in (0, 1].",
    ),
    click.option(
        "--top-k",
        type=int,
        default=None,
        help="Sample among the k likeliest tokens only [default: all].",
    ),
    click.option(
        "--seed",
        type=int,
        default=None,
        help="Random seed in [0, 2**64), for the same reply every time [default: random].",
    ),
    click.option(
        "--reasoning-effort",
        "-e",
        type=Effort(),
        default="medium",
        show_default=True,
        help="How long the model thinks before it answers.",
    ),
    click.option(
        "--system",
        default=None,
        help="Model identity, the first line of the system message [default: harmony's].",
    ),
    click.option(
        "--developer",
        default=None,
        help="Instructions for the model (the harmony developer message).",
    ),
    click.option(
        "--tools",
        metavar="FILE",
        default=None,
        help="Function tools the model may call: OpenAI function-tool JSON, a list of "
        '{"type": "function", "function": {"name", "description", "parameters"}}.',
    ),
    click.option(
        "--json-schema",
        metavar="FILE",
        default=None,
        help="Answer with JSON valid against the JSON schema in FILE, printed alone (decoding "
        "is constrained; the reasoning stays free).",
    ),
    click.option(
        "--json-object",
        is_flag=True,
        help="Answer with one JSON object, printed alone (decoding is constrained).",
    ),
    click.option(
        "--show-reasoning/--hide-reasoning",
        default=True,
        show_default=True,
        help="Show the reasoning (dim, under 'Thinking...') before the answer.",
    ),
]


def model_options(command: Callable) -> Callable:
    """Add the options every generating command takes."""
    for option in reversed(_OPTIONS):
        command = option(command)
    return command
