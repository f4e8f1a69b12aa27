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
from dataclasses import asdict

import click

from ..chat.harmony_parser import parse_completion
from ..chat.session import Generation, user_prompt
from ..chat.stats import peak_memory
from ..chat.tokenizer import Tokenizer
from ..chat.tokens import ENDOFTEXT, STOP_TOKENS
from ..errors import GptossError
from .chat import INCOMPLETE
from .common import Model, open_model, read_prompt, stats_lines
from .display import show_harmony, show_text
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

    model = open_model(options, prompt_of=encode, reply=reply)
    stop = (ENDOFTEXT,) if raw else STOP_TOKENS
    sampling = options.sampling()
    generation = Generation(model.runner, model.prompt, sampling, stop, model.grammar)
    show_reasoning = options.show_reasoning and reply is None  # the JSON alone on stdout
    interrupted = False
    try:
        _stream(generation, model, raw=raw, quiet=as_json, show_reasoning=show_reasoning)
    except KeyboardInterrupt:
        interrupted = True
        click.echo("(interrupted)", err=True)
    if as_json:
        click.echo(json.dumps(report(generation, model, raw), indent=2, ensure_ascii=False))
    if verbose:
        for line in stats_lines(generation.stats, generation.finish_reason, model.runner.device):
            click.echo(line, err=True)
        click.echo(f"kernels: {model.runner.model.kernel_name}", err=True)
    if interrupted:
        sys.exit(130)
    if reply is not None and generation.finish_reason == "length":
        click.echo(f"error: {INCOMPLETE}", err=True)
        sys.exit(1)


def _stream(
    generation: Generation, model: Model, *, raw: bool, quiet: bool, show_reasoning: bool
) -> None:
    if quiet:
        for _ in generation:
            pass
    elif raw:
        show_text(generation, model.tokenizer, generation.stop)
    else:
        show_harmony(generation, model.tokenizer, show_reasoning)


def report(generation: Generation, model: Model, raw: bool) -> dict:
    """The reply as a JSON-ready dict: texts, tool calls, token ids and counts, timings."""
    tokens, stats, finish = generation.output, generation.stats, generation.finish_reason
    if raw:
        text = model.tokenizer.decode(t for t in tokens if t not in generation.stop)
        final, analysis, calls = text, "", []
    else:
        completion = parse_completion(tokens, model.tokenizer)
        final, analysis = completion.final_text, completion.analysis_text
        calls = [{"name": c.name, **asdict(c)} for c in completion.tool_calls]
        finish = completion.finish_reason if finish == "stop" else finish  # maybe "tool_calls"
    peak = peak_memory(model.runner.device)
    return {
        "model": model.runner.name,
        "final": final,
        "analysis": analysis,
        "tool_calls": calls,
        "finish_reason": finish,
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
