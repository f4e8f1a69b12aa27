"""A scripted checkpoint: random `tiny`-geometry weights that reply in fixed harmony, for agents.

`write_scripted(folder, tokenizer)` writes a checkpoint in the published HF layout whose model,
run greedily or sampled at temperature 1, replies to any harmony prompt with

    analysis THINK, then a call of `exec_command` with ARGS     (TRIGGER is in the prompt and
                                                                 no call is in it yet)
    analysis THINK, then the final answer ANSWER                (otherwise)

and stops (`<|call|>` or `<|return|>`), so a client such as Codex finishes a tool loop: call,
output, answer. A model that only maps each token to the next cannot do this (`<|channel|>` is
followed by "analysis" in the first message and by "final" in the second), so the weights form a
small state machine, all other weights staying random (their output is noise beside these):

- every token the replies use has a dimension of its own, its "state"; its embedding is
  EMBED·e_state, and the unembedding maps each state to the token that follows it (MARGIN);
  every other token embeds at random in the remaining "noise" dimensions, and unembeds from them;
- a few attention heads rewrite a state when a marker token is visible (a query that reads the
  state, a key that reads the marker, an output that subtracts the state and adds the new one).
  Layer 0 (sliding, 8 tokens) turns the second `<|channel|>` (the end of THINK within reach) into
  "second", and a `<|message|>` into "answer" (THINK's end in reach) or "arguments" (a
  `<|constrain|>` in reach); layer 1 (full) turns "second" into "call" when TRIGGER is anywhere
  before, unless a `<|constrain|>` is too (a call already made outranks it).

The rotary pairs used are the slowest ones, whose angle barely moves over the context, so the
scores do not depend on positions. conftest's `scripted_model` writes one per session;
`python tests/scripted_model.py OUT` writes one for a manual run (`gptoss-lite serve --model OUT`).
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gptoss_lite.chat.tokens import CALL, CHANNEL, CONSTRAIN, END, MESSAGE, RETURN, START
from gptoss_lite.checkpoint.synthetic import write_synthetic
from gptoss_lite.config import preset
from gptoss_lite.model.rope import yarn_inv_freq

THINK = "Hmm, pondering…"
ANSWER = "All set!"
ARGS = '{"cmd":"echo hello"}'
TRIGGER = " pineapple"  # a user message with this word (after a space) asks for the call
CALL_HEADER = "commentary to=functions.exec_command "
# the tiny geometry with the published context (Codex's first prompt is ~10k tokens)
CONFIG = preset("tiny").with_(rope_original_context=4096, max_context=131072, name="scripted")

EMBED = 256.0  # norm of every embedding; the random layers add O(1) per dimension beside it
MARGIN = 4.0  # unembedding weight: the next token's logit is ~8·MARGIN (rms-normed state ~8)
NOISE_UNEMBED_STD = 1.0
SINK = 20.0  # a rule head with no marker in view attends to its sink (output ~e^-20)
SCORE = 40.0  # score of a marker in view; a call already made scores SCORE + 20 in layer 1
MARKER_PAIRS = (7, 6)  # rotary pairs (slowest first) the layer-0 markers use


@dataclass(frozen=True)
class Rule:
    """In `layer`, query head `head` turns state `state` into `new` when `marker` is in view
    (and `unless` is not: it outranks the marker and changes nothing)."""

    layer: int
    head: int
    state: int | str
    marker: int
    new: int | str
    unless: int | None = None


def script(tokenizer) -> tuple[dict[int | str, int], list[Rule], list[int | str]]:
    """The state machine: each state's next token, the rules, and every state."""
    enc = tokenizer.encode
    think, answer, args = enc(THINK), enc(ANSWER), enc(ARGS)
    header = enc(CALL_HEADER)
    (trigger,) = enc(TRIGGER)
    (assistant,) = enc("assistant")
    chains: list[list[int | str]] = [
        [assistant, CHANNEL, *enc("analysis"), MESSAGE, *think, END, START, assistant, CHANNEL],
        ["second", *enc("final"), MESSAGE],
        ["answer", *answer, RETURN],
        ["call", *header, CONSTRAIN, *enc("json"), MESSAGE],
        ["arguments", *args, CALL],
        # tool_choice "required" ends the prompt at "...functions." for the model to finish
        [enc("commentary to=functions.")[-1], *enc("exec_command")],
    ]
    successors: dict[int | str, int] = {}
    for chain in chains:
        for state, token in itertools.pairwise(chain):
            if successors.setdefault(state, token) != token:
                raise ValueError(f"state {state!r} would be followed by two tokens")
    rules = [
        Rule(0, 0, CHANNEL, think[-1], "second"),
        Rule(0, 1, MESSAGE, think[-1], "answer"),
        Rule(0, 2, MESSAGE, CONSTRAIN, "arguments"),
        Rule(1, 0, "second", trigger, "call", unless=CONSTRAIN),
    ]
    states = sorted({*successors, *successors.values(), trigger}, key=str)
    assert all(r.unless is None or r.unless in states for r in rules)
    return successors, rules, states


def write_scripted(folder: str | Path, tokenizer, seed: int = 0) -> Path:
    """Write the scripted checkpoint to `folder` (random weights of `seed` elsewhere)."""
    folder = write_synthetic(folder, CONFIG, seed=seed)
    path = folder / "model.safetensors"
    tensors = load_file(path)
    successors, rules, states = script(tokenizer)
    c = CONFIG
    dim = {state: i for i, state in enumerate(states)}
    noise = list(range(len(states), c.hidden_size))
    assert len(noise) >= 8, "too many states for the hidden size"
    generator = torch.Generator().manual_seed(seed)

    embed = torch.zeros(c.vocab_size, c.hidden_size)
    draw = torch.randn(c.vocab_size, len(noise), generator=generator)
    embed[:, noise] = draw * (EMBED / draw.norm(dim=1, keepdim=True))
    unembed = torch.zeros(c.vocab_size, c.hidden_size)
    unembed[:, noise] = NOISE_UNEMBED_STD * torch.randn(
        c.vocab_size, len(noise), generator=generator
    )
    tokens = [s for s in states if isinstance(s, int)]
    embed[tokens] = 0.0
    unembed[tokens] = 0.0
    for token in tokens:
        embed[token, dim[token]] = EMBED
    for state, token in successors.items():
        unembed[token, dim[state]] += MARGIN
    tensors["model.embed_tokens.weight"] = embed
    tensors["lm_head.weight"] = unembed
    for name in tensors:
        if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
            tensors[name] = torch.ones_like(tensors[name])
    for layer in sorted({r.layer for r in rules}):
        _rule_heads(tensors, layer, [r for r in rules if r.layer == layer], dim)
    save_file(
        {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
        path,
        metadata={"format": "pt"},
    )
    return folder


def _rule_heads(tensors: dict, layer: int, rules: list[Rule], dim: dict) -> None:
    """Make KV head 0 of `layer` and its query heads carry out `rules` (one query head each)."""
    c = CONFIG
    d, g = c.head_dim, c.num_heads // c.num_kv_heads
    assert len(rules) <= g and all(r.head < g for r in rules)
    p = f"model.layers.{layer}.self_attn."
    q, k, v = (tensors[f"{p}{n}_proj.weight"].float() for n in "qkv")
    o = tensors[f"{p}o_proj.weight"].float()
    for name in ("q", "k", "v"):
        tensors[f"{p}{name}_proj.bias"] = tensors[f"{p}{name}_proj.bias"].float()
    q[: g * d] = 0.0  # the query heads of KV head 0
    k[:d], v[:d] = 0.0, 0.0
    o[:, : g * d] = 0.0
    for name, rows in (("q", g * d), ("k", d), ("v", d)):
        tensors[f"{p}{name}_proj.bias"][:rows] = 0.0
    sinks = tensors[f"{p}sinks"].float()
    sinks[:g] = SINK
    _, concentration = yarn_inv_freq(c)
    # q·k = 64·a·b (both rms-normed states ~8), times c² from the rotation, times d^-0.5
    unit = 64 * concentration**2 * d**-0.5
    markers = list(dict.fromkeys(r.marker for r in rules))
    slots = {}  # marker -> (rotary pair, value dimension)
    for i, marker in enumerate(markers):
        slots[marker] = (MARKER_PAIRS[i], i)
        k[MARKER_PAIRS[i], dim[marker]] = SCORE / unit
        v[i, dim[marker]] = 1.0
    for rule in rules:
        if rule.unless is not None:  # same key pair, 20 higher, no value: the rule is off
            k[slots[rule.marker][0], dim[rule.unless]] = (SCORE + 20) / unit
        pair, value = slots[rule.marker]
        q[rule.head * d + pair, dim[rule.state]] = 1.0
        # the head's output (~8 = rms-normed value) swaps the state for the new one
        o[dim[rule.state], rule.head * d + value] = -EMBED / 8
        o[dim[rule.new], rule.head * d + value] = EMBED / 8
    tensors[f"{p}q_proj.weight"], tensors[f"{p}k_proj.weight"] = q, k
    tensors[f"{p}v_proj.weight"], tensors[f"{p}o_proj.weight"] = v, o
    tensors[f"{p}sinks"] = sinks


if __name__ == "__main__":
    from gptoss_lite.chat.tokenizer import load_tokenizer

    print(write_scripted(Path(sys.argv[1]), load_tokenizer()))
