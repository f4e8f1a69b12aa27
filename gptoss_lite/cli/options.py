"""The options `run` and `chat` share, each also read from a `GPTOSS_LITE_*` environment variable.

`@model_options` adds the model, sampling and harmony options (--help shows each one's variable);
the command pops them out of its keyword arguments as one `Options`, which makes the `Sampling`
and the empty `Conversation` to start from. A bad --reasoning-effort is one error line.
`kv_cache_option` (--kv-cache-dtype K[,V]) is also taken by plan, profile and bench.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from dataclasses import dataclass, fields

import click

from ..chat.harmony import DEFAULT_IDENTITY, EFFORTS, Conversation
from ..chat.session import Sampling, check_effort
from ..model.kv_quant import KV_FORMATS, KVDtypes

ENV_PREFIX = "GPTOSS_LITE_"


@dataclass(frozen=True)
class Options:
    """The shared options of `run` and `chat`, as click parsed them."""

    model: str
    profile: str | None
    context: int | None
    device: str | None
    kv_cache_dtype: KVDtypes | None
    max_tokens: int | None
    temperature: float
    top_p: float
    top_k: int | None
    seed: int | None
    reasoning_effort: str
    system: str | None
    developer: str | None
    show_reasoning: bool

    @classmethod
    def take(cls, kwargs: dict) -> Options:
        """Pop this class's fields out of a command's keyword arguments."""
        return cls(**{f.name: kwargs.pop(f.name) for f in fields(cls)})

    def sampling(self) -> Sampling:
        """The sampling settings of every reply."""
        return Sampling(self.max_tokens, self.temperature, self.top_p, self.top_k, self.seed)

    def conversation(self) -> Conversation:
        """An empty conversation with these settings and today's date."""
        return Conversation(
            instructions=self.developer,
            reasoning_effort=self.reasoning_effort,
            date=datetime.date.today().isoformat(),
            model_identity=self.system or DEFAULT_IDENTITY,
        )


class Effort(click.ParamType):
    """low, medium or high; anything else is one error line listing them."""

    name = "effort"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return f"[{'|'.join(EFFORTS)}]"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> str:
        return check_effort(str(value))


class KVCacheDtype(click.ParamType):
    """K or K,V storage formats of the KV cache; anything else is one error line."""

    name = "kv"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "K[,V]"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> KVDtypes:
        return value if isinstance(value, KVDtypes) else KVDtypes.parse(str(value))


def env_option(*decls: str, env: str, **kwargs) -> Callable:
    """A click option also read from the environment variable GPTOSS_LITE_<env>."""
    return click.option(*decls, envvar=ENV_PREFIX + env, show_envvar=True, **kwargs)


kv_cache_option = env_option(
    "--kv-cache-dtype",
    env="KV_CACHE_DTYPE",
    type=KVCacheDtype(),
    default=None,
    help=f"KV-cache storage, K then V ({', '.join(KV_FORMATS)}; e.g. q8 or bf16,q8) "
    "[default: the profile's, bf16].",
)


_OPTIONS = [
    env_option(
        "--model",
        "-m",
        env="MODEL",
        default="openai/gpt-oss-20b",
        show_default=True,
        help="Hugging Face repo id or local checkpoint folder.",
    ),
    env_option(
        "--profile",
        "-p",
        env="PROFILE",
        default=None,
        help="Memory profile: built-in name, .toml file or 'auto' [default: this machine].",
    ),
    env_option(
        "--context",
        "-c",
        env="CONTEXT",
        type=click.IntRange(min=1),
        default=None,
        help="Context length in tokens [default: the largest that fits the profile].",
    ),
    env_option(
        "--device",
        env="DEVICE",
        default=None,
        help="cpu, cuda or cuda:N [default: the profile's device].",
    ),
    kv_cache_option,
    env_option(
        "--max-tokens",
        "-n",
        env="MAX_TOKENS",
        type=click.IntRange(min=1),
        default=None,
        help="Most tokens per reply [default: until the context is full].",
    ),
    env_option(
        "--temperature",
        "-t",
        env="TEMPERATURE",
        type=click.FloatRange(min=0),
        default=1.0,
        show_default=True,
        help="Sampling temperature; 0 is greedy.",
    ),
    env_option(
        "--top-p",
        env="TOP_P",
        type=click.FloatRange(0, 1, min_open=True),
        default=1.0,
        show_default=True,
        help="Nucleus sampling: keep the tokens within this probability.",
    ),
    env_option(
        "--top-k",
        env="TOP_K",
        type=click.IntRange(min=1),
        default=None,
        help="Sample among the k likeliest tokens only [default: all].",
    ),
    env_option(
        "--seed",
        env="SEED",
        type=int,
        default=None,
        help="Random seed, for the same reply every time [default: random].",
    ),
    env_option(
        "--reasoning-effort",
        "-e",
        env="REASONING_EFFORT",
        type=Effort(),
        default="medium",
        show_default=True,
        help="How long the model thinks before it answers.",
    ),
    env_option(
        "--system",
        env="SYSTEM",
        default=None,
        help="Model identity, the first line of the system message [default: harmony's].",
    ),
    env_option(
        "--developer",
        env="DEVELOPER",
        default=None,
        help="Instructions for the model (the harmony developer message).",
    ),
    env_option(
        "--show-reasoning/--hide-reasoning",
        env="SHOW_REASONING",
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
