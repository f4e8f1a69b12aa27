"""`gptoss-lite chat` over piped stdin, and the KV-cache reuse between turns that it relies on.

The prefill is counted by wrapping the function the runner feeds prompts through, independently
of the runner's own bookkeeping: a second turn must feed the model only what follows the cached
conversation, also when harmony re-renders the previous reply without its analysis (which needs
the larger sliding-window ring that `chat` loads with).
"""

from __future__ import annotations

import datetime
import functools
import importlib
import json
import re

import openai_harmony as oh
import pytest

import gptoss_lite.engine.runner as runner_module
from gptoss_lite.chat.harmony import Conversation
from gptoss_lite.chat.harmony_parser import parse_completion
from gptoss_lite.cli.display import show_reply
from gptoss_lite.config import read_config
from gptoss_lite.engine.runner import Runner, load
from gptoss_lite.engine.sampling import Sampling
from gptoss_lite.engine.session import ChatSession, chat_ring_slots, user_prompt

pytest_plugins = ["cli_fixtures"]

SCRIPT = (
    "<|channel|>analysis<|message|>The user asks for a sum; it is 4.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>"
)
CHAT_MODULE = importlib.import_module("gptoss_lite.cli.chat")  # the package's `chat` is the command
STATS = re.compile(r"^prompt: (\d+) tokens \((\d+) cached\)", re.MULTILINE)


@pytest.fixture
def fed(monkeypatch) -> list[int]:
    """The number of tokens of every prefill call: what the model is fed for prompts."""
    counts, real = [], runner_module.prefill

    def counting(model, cache, tokens, *args, **kwargs):
        counts.append(tokens.shape[0])
        return real(model, cache, tokens, *args, **kwargs)

    monkeypatch.setattr(runner_module, "prefill", counting)
    return counts


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """Each `Runner.generate` call's prompt and output, recorded around the real one."""
    made, real = [], Runner.generate

    def recording(self, token_ids, *args, **kwargs):
        made.append({"prompt": list(token_ids), "output": []})
        for token in real(self, made[-1]["prompt"], *args, **kwargs):
            made[-1]["output"].append(token)
            yield token

    monkeypatch.setattr(Runner, "generate", recording)
    return made


def test_piped_chat_reuses_the_cache(cli, tiny_model, o200k_tokenizer, fed, calls, capsys):
    lines = [
        "Hello",
        "Tell me more",
        "/effort high",
        "And now?",
        "/reset",
        "Fresh",
        "/exit",
        "Lost",
    ]
    result = cli("chat", "-m", tiny_model, "-n", "4", "--seed", "2", "-v", input="\n".join(lines))
    assert result.exit_code == 0, result.output
    assert len(calls) == len(fed) == 4  # "Lost" came after /exit
    for call in calls:
        show_reply(call["output"], o200k_tokenizer)
    assert result.stdout == capsys.readouterr().out  # the replies and nothing else
    stats = [(int(n), int(cached)) for n, cached in STATS.findall(result.stderr)]
    assert stats[0] == (len(calls[0]["prompt"]), 0)
    # Turn 2 feeds only what follows turn 1's prompt, all of which is cached.
    first, second = calls[0]["prompt"], calls[1]["prompt"]
    assert second[: len(first)] == first and stats[1][1] >= len(first)
    assert fed[1] == len(second) - stats[1][1] <= len(second) - len(first)
    texts = [o200k_tokenizer.decode(call["prompt"]) for call in calls]
    assert "Reasoning: high" in texts[2] and "Hello" in texts[2] and "Tell me more" in texts[2]
    assert "Fresh" in texts[3] and "Hello" not in texts[3] and "Reasoning: high" in texts[3]


def test_next_turn_rewinds_over_the_dropped_analysis(tiny_model, o200k_env, o200k_tokenizer, fed):
    """The cache holds turn 1's prompt and a reply with analysis; turn 2 re-renders the reply
    without it, so the shared prefix ends just after turn 1's prompt (plus `<|channel|>`)."""
    tokenizer, reply = o200k_tokenizer, o200k_tokenizer.encode(SCRIPT, allow_special=True)
    ring = chat_ring_slots(read_config(tiny_model), reply_tokens=64)
    replies = []
    for ring_slots in (ring, None):
        runner = load(tiny_model, device="cpu", dtype="fp32", context=512, ring_slots=ring_slots)
        conversation = Conversation(date=datetime.date.today().isoformat())
        session = ChatSession(runner, tokenizer, conversation, Sampling(3, temperature=0))
        first = user_prompt(conversation, "What is 2 + 2?", tokenizer)
        list(runner.generate(first + reply[:-1], max_new_tokens=1))  # as if turn 1 made `reply`
        session.send("What is 2 + 2?")
        session.commit(parse_completion(reply, tokenizer).messages)
        generation = session.send("And 3 + 3?")
        replies.append(list(generation))
        second = user_prompt(conversation, "And 3 + 3?", tokenizer)
        reused = len(first) + 1 if ring_slots else 0  # the default ring cannot rewind that far
        assert generation.stats.cached_tokens == reused
        assert fed[-1] == len(second) - reused
    assert replies[0] == replies[1]  # greedy tokens agree with and without the reuse


def test_ctrl_c_on_a_terminal_forgets_the_turn(
    cli, tiny_model, scripted, monkeypatch, o200k_tokenizer
):
    monkeypatch.setattr(CHAT_MODULE, "is_terminal", lambda: True)
    prompts = scripted(SCRIPT, interrupt_after=5)
    result = cli("chat", "-m", tiny_model, input="First question\nSecond question\n")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(">>> Thinking...") and result.stdout.count(">>> ") == 3
    assert result.stderr.count("(interrupted; this turn is forgotten)") == 2
    second = o200k_tokenizer.decode(prompts[1])
    assert "Second question" in second and "First question" not in second


def test_ctrl_c_from_a_pipe_ends_the_chat(cli, tiny_model, scripted):
    prompts = scripted(SCRIPT, interrupt_after=5)
    result = cli("chat", "-m", tiny_model, input="First question\nSecond question\n")
    assert result.exit_code == 130 and len(prompts) == 1
    assert result.stdout.startswith("Thinking...") and result.stdout.endswith("\n")


def test_errors_and_commands_do_not_end_the_chat(cli, tiny_model, scripted):
    prompts = scripted(SCRIPT)
    lines = ["word " * 300, "/effort hgih", "/nope", "/effort low", "/help", "Hi"]
    result = cli("chat", "-m", tiny_model, "-c", "256", "--hide-reasoning", input="\n".join(lines))
    assert result.exit_code == 0, result.output
    assert result.stdout == "2 + 2 = 4.\n" and len(prompts) == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 3
    assert "the prompt is 3" in errors[0] and "context holds 256" in errors[0]
    assert "'hgih' is not one of: low, medium, high" in errors[1]
    assert "unknown command /nope" in errors[2]
    assert "(reasoning effort: low)" in result.stderr and "/reset" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("reply_tokens", [None, 64])
def test_plan_counts_the_chat_ring(tiny_model, reply_tokens):
    config = read_config(tiny_model)
    ring = chat_ring_slots(config, reply_tokens)
    assert ring == config.sliding_window + (reply_tokens or 4096)
    runner = load(tiny_model, device="cpu", context=256, ring_slots=ring)
    per_slot = 2 * config.num_kv_heads * config.head_dim * 2  # k and v in bf16
    assert runner.plan.kv_ring_bytes == config.num_sliding_layers * ring * per_slot
    assert runner.plan.kv_bytes == runner.cache.nbytes


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]
CALL_SCRIPT = (
    "<|channel|>analysis<|message|>Need the weather.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"city":"SF"}<|call|>'
)
ANSWER_SCRIPT = (
    "<|channel|>analysis<|message|>It is 21 C.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>21 °C in SF.<|return|>"
)


@pytest.fixture
def tools_file(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps(TOOLS))
    return path


def oracle_prompt(harmony, *turns) -> list[int]:
    """openai-harmony's prompt for the TOOLS conversation so far: `turns` are user texts, token
    lists of model replies (parsed by harmony) and (tool name, output) results."""
    tool = TOOLS[0]["function"]
    described = oh.ToolDescription.new(tool["name"], tool["description"], tool["parameters"])
    system = oh.SystemContent.new().with_conversation_start_date(datetime.date.today().isoformat())
    developer = oh.DeveloperContent.new().with_function_tools([described])
    messages = [
        oh.Message.from_role_and_content(oh.Role.SYSTEM, system),
        oh.Message.from_role_and_content(oh.Role.DEVELOPER, developer),
    ]
    for turn in turns:
        if isinstance(turn, str):
            messages.append(oh.Message.from_role_and_content(oh.Role.USER, turn))
        elif isinstance(turn, list):
            messages += harmony.parse_messages_from_completion_tokens(turn, oh.Role.ASSISTANT)
        else:
            author = oh.Author(role=oh.Role.TOOL, name=f"functions.{turn[0]}")
            result = oh.Message.from_author_and_content(author, turn[1])
            messages.append(result.with_channel("commentary").with_recipient("assistant"))
    conversation = oh.Conversation.from_messages(messages)
    return harmony.render_conversation_for_completion(conversation, oh.Role.ASSISTANT)


def test_chat_runs_a_tool_chain(
    cli, tiny_model, scripted, tools_file, o200k_tokenizer, harmony_oracle
):
    prompts = scripted([CALL_SCRIPT, ANSWER_SCRIPT, SCRIPT])
    lines = ["Weather in SF?", '{"temp_c": 21}', "Thanks"]
    result = cli(
        "chat", "-m", tiny_model, "--tools", tools_file, "--hide-reasoning", input="\n".join(lines)
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == '-> functions.get_weather {"city":"SF"}\n21 °C in SF.\n2 + 2 = 4.\n'
    call, answer = (
        o200k_tokenizer.encode(t, allow_special=True) for t in (CALL_SCRIPT, ANSWER_SCRIPT)
    )
    oracle = functools.partial(oracle_prompt, harmony_oracle)
    chain = ["Weather in SF?", call, ("get_weather", '{"temp_c": 21}')]
    assert prompts[0] == oracle(chain[0])
    assert prompts[1] == oracle(*chain)  # the chain's reasoning kept
    assert prompts[2] == oracle(*chain, answer, "Thanks")  # dropped once answered


def test_chat_without_a_tool_result_forgets_the_turn(
    cli, tiny_model, scripted, tools_file, monkeypatch, o200k_tokenizer
):
    monkeypatch.setattr(CHAT_MODULE, "is_terminal", lambda: True)
    typed = iter(["Weather in SF?", KeyboardInterrupt, "Hi"])  # Ctrl-C at `result of ...>`
    shown = []

    def fake_input(prompt: str) -> str:
        shown.append(prompt)
        line = next(typed, EOFError)
        if isinstance(line, type):
            raise line
        return line

    monkeypatch.setattr("builtins.input", fake_input)
    prompts = scripted([CALL_SCRIPT, SCRIPT])
    result = cli("chat", "-m", tiny_model, "--tools", tools_file, "--hide-reasoning")
    assert result.exit_code == 0, result.output
    assert shown == [">>> ", "result of get_weather> ", ">>> ", ">>> "]
    assert "(no tool result; this turn is forgotten)" in result.stderr
    assert len(prompts) == 2 and "Weather" not in o200k_tokenizer.decode(prompts[1])


def test_piped_chat_ending_before_the_tool_result(cli, tiny_model, scripted, tools_file):
    prompts = scripted(CALL_SCRIPT)
    result = cli("chat", "-m", tiny_model, "--tools", tools_file, input="Weather in SF?\n")
    assert result.exit_code == 0, result.output
    assert len(prompts) == 1 and "(no tool result; this turn is forgotten)" in result.stderr


def test_bad_tools_file_is_one_line_before_loading(cli, tiny_model, tmp_path):
    bad = tmp_path / "tools.json"
    for content, problem in [
        ("[{", "cannot read"),
        ('[{"type": "function", "function": {"name": "no spaces"}}]', "'no spaces' is not 1-64"),
    ]:
        bad.write_text(content)
        result = cli("chat", "-m", tiny_model, "--tools", bad, input="Hi\n")
        assert result.exit_code == 1 and result.stdout == ""
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"error: {bad}") and problem in line
