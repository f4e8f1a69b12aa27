"""`gptoss-lite run`: answer one prompt and exit, like `ollama run MODEL PROMPT`.

The prompt is the argument or, without one, stdin. It becomes a harmony conversation (system,
optional developer instructions, the user message) and the reply streams to stdout: the reasoning
dim under "Thinking...", then the answer. `--raw` continues the text as it is and stops at
<|endoftext|>; `--json` prints one JSON object at the end instead of streaming; `--verbose` adds
token counts, speeds and peak memory on stderr. `--json-schema FILE` and `--json-object` hold the
answer to JSON (constrained decoding) and print that JSON alone; a reply cut by --max-tokens
before its JSON is complete is an error line and status 1, never passed off as an answer.
Ctrl-C stops the reply, keeps what was printed (and still prints the JSON or the numbers asked
for) and exits with status 130.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Collection

import click

from ..chat.harmony import FUNCTIONS
from ..chat.reply import read_reply
from ..chat.tokenizer import Tokenizer
from ..chat.tokens import ENDOFTEXT, STOP_TOKENS
from ..engine.session import Generation, user_prompt
from ..errors import GptossError
from ..measure.meter import peak_memory
from .chat import INCOMPLETE
from .common import Model, open_model, read_prompt, stats_lines
from .display import show_reply
from .options import Options, model_options


@click.command()
@click.argument("prompt", required=False)
@model_options
@click.option(
    "--raw",
    is_flag=True,
    help="Plain text completion: no harmony, stop at <|endoftext|>.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON object (answer, reasoning, tool calls, token counts, timings).",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="After the reply, print token counts, tok/s and peak memory on stderr.",
)
def run(prompt: str | None, raw: bool, as_json: bool, verbose: bool, **kwargs) -> None:
    """Answer PROMPT (or stdin) and exit.

    The memory plan is printed on stderr before the weights load. Every option can also be set
    with the environment variable shown beside it.
    """
    options = Options.take(kwargs)
    text = read_prompt(prompt)
    conversation = options.conversation()
    reply = options.reply_format(conversation)
    if reply is not None and raw:
        raise GptossError("--json-schema and --json-object hold a harmony answer: drop --raw")

    def encode(tokenizer: Tokenizer) -> list[int]:
        return tokenizer.encode(text) if raw else user_prompt(conversation, text.strip(), tokenizer)

    model = open_model(
        options.model,
        options.opening,
        max_tokens=options.sampling.max_new_tokens,
        prompt_of=encode,
        reply=reply,
    )
    stop = (ENDOFTEXT,) if raw else STOP_TOKENS
    generation = Generation(model.runner, model.prompt, options.sampling, stop, model.grammar)
    tools = [tool.name for tool in conversation.tools]
    interrupted = False
    try:
        if as_json:
            for _ in generation:
                pass
        else:
            show_reply(
                generation,
                model.tokenizer,
                harmony=not raw,
                tools=tools,
                show_reasoning=options.show_reasoning and reply is None,  # the JSON alone
            )
    except KeyboardInterrupt:
        interrupted = True
        click.echo("(interrupted)", err=True)
    if as_json:
        out = report(generation, model, raw, tools)
        click.echo(json.dumps(out, indent=2, ensure_ascii=False))
    if verbose:
        for line in stats_lines(generation.stats, generation.finish_reason, model.runner.device):
            click.echo(line, err=True)
        click.echo(f"kernels: {model.runner.model.kernel_name}", err=True)
    if interrupted:
        sys.exit(130)
    if reply is not None and generation.finish_reason == "length":
        click.echo(f"error: {INCOMPLETE}", err=True)
        sys.exit(1)


def report(generation: Generation, model: Model, raw: bool, tools: Collection[str]) -> dict:
    """The reply as a JSON-ready dict: texts, tool calls, token ids and counts, timings."""
    tokens, stats = generation.output, generation.stats
    reply = read_reply(tokens, model.tokenizer, harmony=not raw, tools=tools)
    calls = [
        {
            "name": call.name,
            "recipient": f"{FUNCTIONS}{call.name}",
            "arguments": call.text,
            "content_type": call.content_type,
        }
        for call in reply.tool_calls
    ]
    peak = peak_memory(model.runner.device)
    return {
        "model": model.runner.name,
        "final": reply.text("text"),
        "analysis": reply.text("reasoning"),
        "tool_calls": calls,
        "finish_reason": reply.finish_reason(generation.finish_reason),
        "output_ids": tokens,
        "usage": {
            "prompt_tokens": stats.prompt_tokens,
            "cached_tokens": stats.cached_tokens,
            "completion_tokens": stats.generated_tokens,
        },
        "timings": {
            "load_s": model.load_seconds,
            "prefill_s": stats.prefill_seconds,
            "decode_s": stats.decode_seconds,
            "prompt_tokens_per_s": stats.prefill_rate,
            "completion_tokens_per_s": stats.decode_rate,
        },
        "context": model.runner.context,
        "peak_memory_bytes": None if peak is None else peak[0],
    }
