"""The scripted checkpoint (tests/scripted_model.py) through the real loader and generation loop.

The agent tests replay clients against this model, so its three replies must come out exactly,
sampled at temperature 1, in bf16 as `serve` runs it: analysis then a call when the
user's message has TRIGGER and no call was made yet, analysis then the answer otherwise, and
the arguments when a forced tool choice opens the call. The margin of every scripted token over
the runner-up is what keeps sampling on the script.
"""

from __future__ import annotations

import datetime

import pytest
import torch
from scripted_model import ANSWER, ARGS, CALL_HEADER, THINK, TRIGGER

from gptoss_lite.chat.harmony import Conversation, Message, ToolDef, render_prompt
from gptoss_lite.chat.tokens import STOP_TOKENS
from gptoss_lite.config import read_config
from gptoss_lite.engine.runner import load
from gptoss_lite.engine.session import chat_ring_slots
from gptoss_lite.server.conversation import forced_call

TOOLS = [ToolDef("exec_command", "Run a command.", {"type": "object"})]
ANALYSIS = f"<|channel|>analysis<|message|>{THINK}<|end|><|start|>assistant"
ANSWERED = f"{ANALYSIS}<|channel|>final<|message|>{ANSWER}<|return|>"
CALLED = f"{ANALYSIS}<|channel|>{CALL_HEADER}<|constrain|>json<|message|>{ARGS}<|call|>"
# A scripted token's log-probability is within this of 0 (runners-up sit ~31 nats lower, so
# 201,088 tokens at temperature 1 leave the script with probability ~1e-8 per token).
SURE = 1e-6


@pytest.fixture(scope="module")
def runner(scripted_model):
    ring = chat_ring_slots(read_config(scripted_model))
    return load(scripted_model, device="cpu", dtype="bf16", context=1024, ring_slots=ring)


def _prompt(messages: list[Message], tokenizer) -> list[int]:
    today = datetime.date.today().isoformat()
    return render_prompt(Conversation(messages, tools=TOOLS, date=today), tokenizer)


def _reply(runner, prompt: list[int], tokenizer, **sampling) -> str:
    tokens = runner.generate(prompt, max_new_tokens=80, stop=STOP_TOKENS, **sampling)
    return tokenizer.decode(list(tokens))


ASKED = [Message.user(f"Check the{TRIGGER} stock")]
CHAIN = [
    *ASKED,
    Message("assistant", THINK, channel="analysis"),
    Message.tool_call("exec_command", ARGS),
    Message.tool_result("functions.exec_command", "hello\n"),
]


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        ([Message.user("Say hi")], ANSWERED),
        (ASKED, CALLED),
        (CHAIN, ANSWERED),  # the call was made: the chain ends with the answer
        ([*CHAIN, Message("assistant", ANSWER, channel="final"), *ASKED], ANSWERED),
    ],
    ids=["answer", "call", "after-call", "asked-again"],
)
def test_replies_follow_the_script(runner, o200k_tokenizer, messages, expected):
    prompt = _prompt(messages, o200k_tokenizer)  # temperature 1: what clients get by default
    assert _reply(runner, prompt, o200k_tokenizer, temperature=1.0, seed=7) == expected


@pytest.mark.parametrize("recipient", ["functions.", "functions.exec_command"])
def test_a_forced_call_is_finished(runner, o200k_tokenizer, recipient):
    prompt = _prompt([Message.user("Say hi")], o200k_tokenizer)
    opened = forced_call(recipient, o200k_tokenizer)
    whole = o200k_tokenizer.decode(opened) + _reply(
        runner, prompt + opened, o200k_tokenizer, temperature=0
    )
    assert whole == f"<|channel|>{CALL_HEADER}<|constrain|>json<|message|>{ARGS}<|call|>"


def test_every_scripted_token_is_near_certain(runner, o200k_tokenizer):
    for messages in ([Message.user("Say hi")], ASKED):
        prompt = _prompt(messages, o200k_tokenizer)
        reply = list(runner.generate(prompt, max_new_tokens=80, temperature=0, stop=STOP_TOKENS))
        logits = runner.logits(prompt + reply[:-1])[len(prompt) - 1 :]
        chosen = torch.log_softmax(logits.float(), dim=-1).gather(1, torch.tensor(reply)[:, None])
        assert chosen.min().item() > -SURE
