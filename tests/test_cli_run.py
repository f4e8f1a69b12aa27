"""`gptoss-lite run` end to end on a tiny random checkpoint, and its display on scripted replies.

Random weights give random tokens, so the real-model tests check structure: what is printed is
what the reported token ids decode to, the JSON counts agree with the ids and the prompt, the
stats are there. Scripted replies (`Runner.generate` replaced) check the harmony display exactly.
"""

from __future__ import annotations

import datetime
import json

import pytest
import tiktoken
from click.testing import Result
from test_cli_chat import TOOLS, oracle_prompt

from gptoss_lite.chat.harmony import Conversation
from gptoss_lite.chat.reply import read_reply
from gptoss_lite.chat.tokens import ENDOFTEXT, STOP_TOKENS
from gptoss_lite.cli.display import show_reply
from gptoss_lite.engine.session import user_prompt
from gptoss_lite.kernels import cpu

pytest_plugins = ["cli_fixtures"]

THOUGHT = "The user asks for a sum. 2 + 2 = 4."
SCRIPT = (
    f"<|channel|>analysis<|message|>{THOUGHT}<|end|>"
    "<|start|>assistant<|channel|>final<|message|>2 + 2 = 4.<|return|>"
)
SHOWN = f"Thinking...\n{THOUGHT}\n...done thinking.\n\n2 + 2 = 4.\n"
TOOL_SCRIPT = (
    "<|channel|>analysis<|message|>Need the weather.<|end|>"
    "<|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
    '<|message|>{"city":"SF"}<|call|>'
)


def one_error_line(result: Result) -> str:
    """The single `error: ...` line a failed command printed, checking nothing else was."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # not a traceback
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def today_prompt(text: str, tokenizer, **settings) -> list[int]:
    conversation = Conversation(date=datetime.date.today().isoformat(), **settings)
    return user_prompt(conversation, text, tokenizer)


# ------------------------------------------------------------------ display of scripted replies


def test_reasoning_shown_apart_then_the_answer(cli, tiny_model, scripted):
    prompts = scripted(SCRIPT)
    result = cli("run", "-m", tiny_model, "What is 2 + 2?")
    assert result.exit_code == 0, result.output
    assert result.stdout == SHOWN
    assert len(prompts) == 1


def test_hidden_reasoning_prints_only_the_answer(cli, tiny_model, scripted):
    scripted(SCRIPT)
    result = cli("run", "-m", tiny_model, "--hide-reasoning", "What is 2 + 2?")
    assert result.stdout == "2 + 2 = 4.\n"


def test_json_of_a_scripted_reply(cli, tiny_model, scripted, o200k_tokenizer):
    prompts = scripted(SCRIPT)
    result = cli("run", "-m", tiny_model, "--json", "What is 2 + 2?")
    out = json.loads(result.stdout)
    ids = o200k_tokenizer.encode(SCRIPT, allow_special=True)
    assert out["final"] == "2 + 2 = 4." and out["analysis"] == THOUGHT
    assert out["tool_calls"] == [] and out["finish_reason"] == "stop"
    assert out["output_ids"] == ids and out["usage"]["completion_tokens"] == len(ids)
    assert out["usage"]["prompt_tokens"] == len(prompts[0])
    assert prompts[0] == today_prompt("What is 2 + 2?", o200k_tokenizer)


def test_tool_call_is_shown_and_reported(cli, tiny_model, scripted, tmp_path):
    scripted(TOOL_SCRIPT)
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    shown = cli("run", "-m", tiny_model, "--tools", tools, "--hide-reasoning", "Weather in SF?")
    assert shown.stdout == '-> functions.get_weather {"city":"SF"}\n'
    out = json.loads(cli("run", "-m", tiny_model, "--tools", tools, "--json", "Weather?").stdout)
    call = out["tool_calls"]
    assert out["finish_reason"] == "tool_calls"
    assert call == [
        {
            "name": "get_weather",
            "recipient": "functions.get_weather",
            "arguments": '{"city":"SF"}',
            "content_type": "json",
        }
    ]


def test_a_call_to_an_undeclared_tool_is_shown_as_text(cli, tiny_model, scripted):
    scripted(TOOL_SCRIPT)
    shown = cli("run", "-m", tiny_model, "--hide-reasoning", "Weather in SF?")
    assert shown.stdout == '{"city":"SF"}\n'
    out = json.loads(cli("run", "-m", tiny_model, "--json", "Weather?").stdout)
    assert (out["tool_calls"], out["final"], out["finish_reason"]) == ([], '{"city":"SF"}', "stop")


def test_tools_file_is_declared_to_the_model(cli, tiny_model, scripted, tmp_path, harmony_oracle):
    prompts = scripted(TOOL_SCRIPT)
    (tmp_path / "tools.json").write_text(json.dumps(TOOLS))
    result = cli("run", "-m", tiny_model, "--tools", tmp_path / "tools.json", "Weather in SF?")
    assert result.exit_code == 0, result.output
    assert result.stdout.endswith('-> functions.get_weather {"city":"SF"}\n')
    assert prompts == [oracle_prompt(harmony_oracle, "Weather in SF?")]


def test_ctrl_c_keeps_what_was_printed_and_exits_130(cli, tiny_model, scripted, o200k_tokenizer):
    cut = len(o200k_tokenizer.encode(SCRIPT, allow_special=True)) - 3  # inside the answer
    scripted(SCRIPT, interrupt_after=cut)
    result = cli("run", "-m", tiny_model, "-v", "What is 2 + 2?")
    assert result.exit_code == 130
    assert SHOWN.startswith(result.stdout.rstrip("\n")) and result.stdout.endswith("\n")
    assert "done thinking" in result.stdout and "(interrupted)" in result.stderr
    out = json.loads(cli("run", "-m", tiny_model, "--json", "What is 2 + 2?").stdout)
    assert out["finish_reason"] == "interrupted" and out["usage"]["completion_tokens"] == cut


def test_display_takes_any_token_iterator(o200k_tokenizer, capsys):
    ids = o200k_tokenizer.encode(SCRIPT, allow_special=True)
    reply = show_reply(iter(ids), o200k_tokenizer)
    assert capsys.readouterr().out == SHOWN
    assert reply.text() == "2 + 2 = 4." and reply.finish_reason("stop") == "stop"
    unfinished = o200k_tokenizer.encode("<|channel|>analysis<|message|>Hmm", allow_special=True)
    show_reply(unfinished, o200k_tokenizer)
    assert capsys.readouterr().out == "Thinking...\nHmm\n"
    plain = [*o200k_tokenizer.encode("héllo"), ENDOFTEXT]
    assert show_reply(plain, o200k_tokenizer, harmony=False).text() == "héllo"
    assert capsys.readouterr().out == "héllo\n"


# ------------------------------------------------------------------ the tiny random model


def test_printed_reply_is_what_was_generated(cli, tiny_model, o200k_tokenizer, capsys):
    args = ("run", "-m", tiny_model, "--seed", "3", "-n", "4", "Hi there")
    out = json.loads(cli(*args, "--json").stdout)
    shown = cli(*args)
    assert shown.exit_code == 0, shown.output
    show_reply(out["output_ids"], o200k_tokenizer)
    assert shown.stdout == capsys.readouterr().out != ""
    reply = read_reply(out["output_ids"], o200k_tokenizer)
    assert out["final"] == reply.text("text") and out["analysis"] == reply.text("reasoning")
    assert "Thinking..." not in cli(*args, "--hide-reasoning").stdout


def test_raw_prints_the_plain_decode(cli, tiny_model, o200k_tokenizer):
    args = ("run", "-m", tiny_model, "--raw", "--seed", "4", "-n", "6", "Once upon a time")
    out = json.loads(cli(*args, "--json").stdout)
    text = o200k_tokenizer.decode(t for t in out["output_ids"] if not o200k_tokenizer.is_special(t))
    assert out["final"] == text and out["analysis"] == ""
    assert out["usage"]["prompt_tokens"] == len(o200k_tokenizer.encode("Once upon a time"))
    assert cli(*args).stdout == text + ("" if text.endswith("\n") else "\n")


def test_json_counts_and_verbose_stats(cli, tiny_model, o200k_tokenizer):
    result = cli("run", "-m", tiny_model, "--seed", "5", "-n", "4", "--json", "-v", "Hi")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    ids, usage = out["output_ids"], out["usage"]
    assert usage["completion_tokens"] == len(ids) <= 4
    assert out["finish_reason"] == ("stop" if ids[-1] in STOP_TOKENS else "length")
    assert usage["prompt_tokens"] == len(today_prompt("Hi", o200k_tokenizer))
    assert usage["cached_tokens"] == 0 and out["context"] == 2048
    assert out["timings"]["prefill_s"] > 0 and out["timings"]["prompt_tokens_per_s"] > 0
    assert out["peak_memory_bytes"] > 0
    plan, prompt, reply, memory, kernels = result.stderr.splitlines()
    assert "context 2,048 tokens" in plan and "weights" in plan and "KV cache" in plan
    assert prompt.startswith(f"prompt: {usage['prompt_tokens']} tokens (0 cached)")
    assert reply.startswith(f"reply: {len(ids)} tokens ({out['finish_reason']})")
    assert "tok/s" in prompt and "tok/s" in reply
    assert memory.startswith("peak memory: ") and memory.endswith("(peak RSS)")
    assert kernels == f"kernels: {cpu.kernel_name() if cpu.available() else 'torch'}"


def test_quantized_kv_cache_warns_in_one_line(cli, tiny_model):
    result = cli("run", "-m", tiny_model, "--kv-cache-dtype", "q8", "-n", "3", "--raw", "Hi")
    assert result.exit_code == 0, result.output
    plan, warning = result.stderr.splitlines()
    assert "context 2,048 tokens" in plan
    assert warning.startswith("warning: K cache in q8: gpt-oss is sensitive to quantized keys")
    env = {"GPTOSS_LITE_KV_CACHE_DTYPE": "bf16,q8", "GPTOSS_LITE_JSON": "1"}
    result = cli("run", "-m", tiny_model, "-n", "2", "Hi", env=env)
    assert result.exit_code == 0 and len(result.stderr.splitlines()) == 1  # V only: no warning


def test_options_from_the_environment(cli, tiny_model):
    env = {"GPTOSS_LITE_MODEL": str(tiny_model), "GPTOSS_LITE_MAX_TOKENS": "3"}
    env |= {"GPTOSS_LITE_CONTEXT": "512", "GPTOSS_LITE_JSON": "1", "GPTOSS_LITE_SEED": "1"}
    out = json.loads(cli("run", "Hi", env=env).stdout)
    assert out["context"] == 512 and out["usage"]["completion_tokens"] <= 3


def test_harmony_settings_from_the_environment(cli, tiny_model, scripted, o200k_tokenizer):
    prompts = scripted(SCRIPT)
    env = {
        "GPTOSS_LITE_MODEL": str(tiny_model),
        "GPTOSS_LITE_REASONING_EFFORT": "high",
        "GPTOSS_LITE_DEVELOPER": "Be terse.",
        "GPTOSS_LITE_SYSTEM": "You are Tiny.",
        "GPTOSS_LITE_SHOW_REASONING": "0",
    }
    result = cli("run", input="What is 2 + 2?\n", env=env)  # the prompt from stdin
    assert result.stdout == "2 + 2 = 4.\n"
    settings = {"reasoning_effort": "high", "instructions": "Be terse."}
    expected = today_prompt(
        "What is 2 + 2?", o200k_tokenizer, **settings, model_identity="You are Tiny."
    )
    assert prompts == [expected]


# ------------------------------------------------------------------ errors: one line each


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["-c", "256", "word " * 300], {}, "error: the prompt is 3"),
        (["-m", "nobody/no-such-model", "Hi"], {}, "error: cannot download nobody/no-such-model"),
        (["-m", "./missing/folder", "Hi"], {}, "neither a local folder nor a Hub repo id"),
        (["-e", "hgih", "Hi"], {}, "reasoning effort 'hgih' is not one of: low, medium, high"),
        (["Hi"], {"GPTOSS_LITE_REASONING_EFFORT": "max"}, "'max' is not one of: low, medium"),
        (["-p", "nope", "Hi"], {}, "error: unknown profile 'nope'; known: "),
        (["--device", "tpu", "Hi"], {}, "error: --device tpu: not a device"),
        (["--kv-cache-dtype", "int4", "Hi"], {}, "error: unknown KV-cache dtype 'int4' for K"),
        ([], {}, "error: no prompt"),
    ],
)
def test_errors_are_one_line(cli, tiny_model, args, env, message):
    result = cli("run", "-m", tiny_model, *args, input="", env=env)
    assert message in one_error_line(result)


def test_missing_tokenizer_is_one_line(cli, tiny_model, tmp_path, monkeypatch):
    def unreachable(url):
        raise OSError(f"cannot reach {url}")

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget loaded encodings
    monkeypatch.setattr(tiktoken.load, "read_file", unreachable)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    line = one_error_line(cli("run", "-m", tiny_model, "Hi"))
    assert line.startswith("error: no tokenizer:") and "TIKTOKEN_CACHE_DIR" in line
