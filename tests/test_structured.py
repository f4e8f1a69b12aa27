"""Structured outputs: every reply that must be JSON is JSON valid against its schema.

`jsonschema` is the independent oracle. Replies come from two sources of logits, both decoded
through the real grammar mask and the real sampler at temperature 1 over many seeds: the random
`tiny` checkpoint (the real model path), and `NoiseRunner`, Gaussian noise with the format and
JSON closing tokens favoured so that replies end within the test's budget (fast, so it runs the
whole schema set, the JSON Schema Test Suite corpus and the server APIs). Where the logits are
noise, only the constraint can make the reply valid.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import ollama
import pytest
import torch
from openai import OpenAI
from pydantic import BaseModel, Field
from server_fixtures import ScriptedRunner

from gptoss_lite.chat.harmony import FUNCTIONS, Conversation
from gptoss_lite.chat.json_schema import SchemaError, check_schema
from gptoss_lite.chat.reply import read_reply
from gptoss_lite.chat.reply_grammar import ReplyFormat, ToolFormat
from gptoss_lite.chat.tokens import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    MESSAGE,
    N_VOCAB,
    RETURN,
    START,
    STOP_TOKENS,
)
from gptoss_lite.cli.chat import INCOMPLETE
from gptoss_lite.engine.constraint import compile_reply, compiler_for
from gptoss_lite.engine.generate import next_token
from gptoss_lite.engine.grammar import GrammarError, GrammarMask
from gptoss_lite.engine.runner import Runner
from gptoss_lite.engine.sampling import GREEDY, Sampling
from gptoss_lite.engine.session import Generation, user_prompt
from gptoss_lite.server import formats
from gptoss_lite.server.conversation import forced_call
from gptoss_lite.server.service import Service
from gptoss_lite.server.tools import responses_tools

pytest_plugins = ["cli_fixtures", "server_fixtures"]

DATA = Path(__file__).parent / "data"
SEEDS = range(6)  # each a whole reply

# A varied set: required fields, enums, bounded arrays, nested objects, bounded integers, anyOf,
# $defs/$ref, maxLength strings, patterns, numbers, booleans and null.
SCHEMAS = {
    "person": json.loads((DATA / "schemas" / "person.json").read_text()),
    "enum_and_bounds": {
        "type": "object",
        "properties": {
            "level": {"enum": ["low", "mid", "high"]},
            "score": {"type": "integer", "minimum": -5, "maximum": 5},
            "ratio": {"type": "number", "minimum": 0, "maximum": 1},
            "ok": {"type": "boolean"},
        },
        "required": ["level", "score", "ratio", "ok"],
        "additionalProperties": False,
    },
    "any_of_and_refs": {
        "type": "object",
        "$defs": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": 0, "maximum": 99},
                    "y": {"type": "integer", "minimum": -9, "maximum": 9},
                },
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "properties": {
            "shape": {"anyOf": [{"$ref": "#/$defs/point"}, {"type": "null"}]},
            "path": {"type": "array", "items": {"$ref": "#/$defs/point"}, "maxItems": 3},
        },
        "required": ["shape", "path"],
        "additionalProperties": False,
    },
    "nested_arrays": {
        "type": "object",
        "properties": {
            "rows": {
                "type": "array",
                "minItems": 2,
                "maxItems": 3,
                "items": {
                    "type": "array",
                    "items": {"type": "string", "maxLength": 4, "pattern": "^[a-z]+$"},
                    "minItems": 1,
                    "maxItems": 2,
                },
            },
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{3}$"},
        },
        "required": ["rows", "code"],
        "additionalProperties": False,
    },
}
FAVOURED = [RETURN, CALL, END, START, CHANNEL, MESSAGE, CONSTRAIN]


def favoured_tokens(tokenizer) -> list[int]:
    """Format tokens and the tokens that close JSON strings, arrays and objects."""
    closers = [tokenizer.encode(text)[0] for text in ('"', "}", "]", '"}', '"]')]
    return FAVOURED + closers


def noise(tokenizer, sampling: Sampling, *, stop=(), mask=None, observe=None):
    """Tokens from seeded noise logits, favouring format and closing tokens, decoded through
    the mask and the sampler generation uses (`Runner.generate`'s arguments)."""
    generator = torch.Generator().manual_seed(sampling.seed or 0)
    bias = torch.zeros(N_VOCAB)
    bias[favoured_tokens(tokenizer)] = 14.0  # against the noise of ~200k ids
    if mask is not None:
        mask.request(None)
    for _ in range(sampling.max_new_tokens):
        logits = torch.randn(N_VOCAB, generator=generator) + bias
        allowed = None if mask is None else mask.allowed(logits)
        token = next_token(logits, sampling, generator, allowed)
        if observe is not None:
            observe(logits, token)
        yield token
        if token in stop:
            return
        if mask is not None:
            mask.request(token)


class NoiseRunner(ScriptedRunner):
    """A runner (for the server) whose replies are `noise`."""

    def generate(self, token_ids, sampling, **settings):
        self.prompts.append(list(token_ids))
        return noise(self.tokenizer, sampling, **settings)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Each noise step samples over 201k ids: on one torch thread, as two threads fighting over
    two busy cores made each step's sampling ~5x slower (measured at load average 10)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def noisy_reply(tokenizer, reply: ReplyFormat, seed: int, prefix=(), budget: int = 400):
    """One reply held to `reply` at temperature 1 (its `Generation`: tokens, finish reason)
    and the reply read from it."""
    grammar = compile_reply(reply, tokenizer)
    sampling = Sampling(max_new_tokens=budget, temperature=1.0, seed=seed)
    runner = NoiseRunner(tokenizer)
    generation = Generation(runner, [0, *prefix], sampling, STOP_TOKENS, grammar, prefix)
    tokens = list(generation)
    tools = [tool.recipient.removeprefix(FUNCTIONS) for tool in reply.tools]
    return generation, read_reply([*prefix, *tokens], tokenizer, tools=tools)


def held_to(generation: Generation, reply, schema: dict) -> bool:
    """Whether the answer ended: then on <|return|>, its JSON valid against `schema`. A reply
    the token limit cut must say so (finish reason "length"), and is not checked."""
    if generation.finish_reason == "length":
        assert reply.finish_reason(generation.finish_reason) == "length"
        return False
    assert generation.finish_reason == "stop" and generation.output[-1] == RETURN
    jsonschema.validate(json.loads(reply.text()), schema)
    return True


# ------------------------------------------------------------------ schemas and their checks


@pytest.mark.parametrize(
    ("schema", "path"),
    [
        (
            {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]},
            "additionalProperties",
        ),
        ({"type": "object", "properties": {"a": {}}, "additionalProperties": False}, "required"),
        ({"type": "object", "additionalProperties": False, "allOf": [{}]}, "allOf"),
        (
            {
                "type": "object",
                "properties": {"a": {"$ref": "http://x/y"}},
                "required": ["a"],
                "additionalProperties": False,
            },
            "properties.a.$ref",
        ),
        ({"type": "array", "items": {"type": "string"}}, "type"),
    ],
)
def test_strict_mode_refuses_outside_its_subset_naming_where(schema, path):
    with pytest.raises(SchemaError) as caught:
        check_schema(schema, strict=True)
    assert caught.value.path == path


def test_schemas_too_deep_or_too_large_are_refused():
    deep: dict = {"type": "object"}
    for _ in range(40):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(SchemaError, match="deeper"):
        check_schema(deep, strict=False)
    with pytest.raises(SchemaError, match="bytes"):
        check_schema({"enum": ["x" * 1000] * 100}, strict=False)
    check_schema(SCHEMAS["person"], strict=True)  # the strict subset itself passes


def test_an_unenforceable_keyword_is_refused_unless_lenient(o200k_tokenizer):
    schema = {"type": "object", "not": {"required": ["a"]}}
    with pytest.raises(Exception, match="not"):
        compile_reply(ReplyFormat(answer=schema), o200k_tokenizer)
    compile_reply(ReplyFormat(answer=schema, lenient=True), o200k_tokenizer)


def test_a_schema_is_compiled_once(o200k_tokenizer):
    reply = ReplyFormat(answer=SCHEMAS["enum_and_bounds"])
    assert compile_reply(reply, o200k_tokenizer) is compile_reply(reply, o200k_tokenizer)


# ------------------------------------------------------------------ the grammar of a reply


def allowed_next(grammar, tokens: list[int]) -> set[int]:
    """The ids the grammar allows after `tokens`, whichever form the mask hands over."""
    mask = GrammarMask(grammar, tokens)
    mask.request(None)
    allowed = mask.allowed(torch.zeros(N_VOCAB))
    return set((allowed.nonzero().flatten() if allowed.dtype == torch.bool else allowed).tolist())


def test_the_grammar_takes_a_canonical_reply_token_by_token(o200k_tokenizer):
    tools = (ToolFormat("functions.get_weather", SCHEMAS["enum_and_bounds"], strict=True),)
    grammar = compile_reply(ReplyFormat(tools=tools), o200k_tokenizer)
    text = (
        "<|channel|>analysis<|message|>Think.<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.get_weather <|constrain|>json<|message|>{"level":"mid","score":-2,'
        '"ratio":0.5,"ok":true}<|call|>'
    )
    tokens = o200k_tokenizer.encode(text, allow_special=True)
    assert allowed_next(grammar, tokens[:-1]) == {CALL}  # every token but the last fits


def test_no_undeclared_tool_can_be_called(o200k_tokenizer):
    tools = (ToolFormat("functions.get_weather"),)
    grammar = compile_reply(ReplyFormat(tools=tools), o200k_tokenizer)
    header = [CHANNEL, *o200k_tokenizer.encode("commentary to=functions.")]
    allowed = allowed_next(grammar, header)
    assert o200k_tokenizer.encode("get")[0] in allowed
    for token in allowed:  # only prefixes of the declared name
        assert "get_weather ".startswith(o200k_tokenizer.decode([token]))


def test_the_reply_cannot_end_before_its_json_is_complete(o200k_tokenizer):
    grammar = compile_reply(ReplyFormat(answer=SCHEMAS["person"]), o200k_tokenizer)
    half = [
        CHANNEL,
        *o200k_tokenizer.encode("final"),
        MESSAGE,
        *o200k_tokenizer.encode('{"name":"A"'),
    ]
    allowed = allowed_next(grammar, half)
    assert allowed and not allowed & {RETURN, CALL, END}


def fits(grammar, tokens: list[int]) -> bool:
    """Whether `tokens` are a start the grammar allows, token by token."""
    try:
        GrammarMask(grammar, tokens)
    except GrammarError:
        return False
    return True


def test_namespaced_and_custom_tools_are_called_as_declared(o200k_tokenizer):
    tools = responses_tools(
        [
            {"type": "custom", "name": "apply_patch"},
            {"type": "namespace", "name": "agents", "tools": [{"type": "function", "name": "run"}]},
        ]
    )
    grammar = formats.reply_grammar(o200k_tokenizer, formats.answer_format(None, "x"), tools, None)

    def call(recipient: str, arguments: str) -> list[int]:
        header = f"<|channel|>commentary to={recipient} <|constrain|>json<|message|>"
        return o200k_tokenizer.encode(header + arguments + "<|call|>", allow_special=True)

    assert fits(grammar, call("agents.run", '{"task":"x"}'))
    assert fits(grammar, call("functions.apply_patch", '"*** Begin Patch"'))  # a JSON string
    assert not fits(grammar, call("functions.apply_patch", '{"patch":"x"}'))
    assert not fits(grammar, call("functions.run", "{}"))  # run is in agents, not functions
    assert not fits(grammar, call("agents.exec", "{}"))


def test_sampling_among_allowed_ids_is_sampling_the_masked_logits():
    logits = torch.tensor([0.5, 2.0, -1.0, 1.0, 3.0, 0.0, 1.5, -0.5])
    ids = torch.tensor([1, 3, 6])
    mask = torch.zeros(8, dtype=torch.bool)
    mask[ids] = True
    for allowed in (ids, mask):
        assert next_token(logits, GREEDY, None, allowed) == 1  # not 4, the global max
        top2 = Sampling(temperature=0.5, top_k=2)
        assert next_token(logits, top2, None, allowed) in (1, 6)
        generator = torch.Generator().manual_seed(0)
        draws = [next_token(logits, Sampling(), generator, allowed) for _ in range(3000)]
        expected = torch.softmax(logits[ids], dim=0)
        seen = torch.tensor([draws.count(i) for i in ids.tolist()]) / len(draws)
        # 3,000 draws: each frequency's standard deviation is under 0.01; 0.04 is 4 of them
        assert seen.sum() == 1 and torch.allclose(seen, expected, atol=0.04), (seen, expected)


# ---------------------------------------------------------- replies valid, whatever the logits


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_noise_replies_validate(o200k_tokenizer, name):
    ended = 0
    for seed in SEEDS:  # a number's digits may run on past the budget: such a reply is cut
        generation, reply = noisy_reply(o200k_tokenizer, ReplyFormat(answer=SCHEMAS[name]), seed)
        ended += held_to(generation, reply, SCHEMAS[name])
    assert ended, "no reply ended within its budget"


def test_json_schema_test_suite_corpus(o200k_tokenizer):
    corpus = json.loads((DATA / "json_schema_test_suite.json").read_text())
    assert len(corpus["schemas"]) > 100
    final = [CHANNEL, *o200k_tokenizer.encode("final"), MESSAGE]
    ended = 0
    for i, entry in enumerate(corpus["schemas"][::2]):  # half, to keep the suite quick
        schema = entry["schema"]
        generation, reply = noisy_reply(o200k_tokenizer, ReplyFormat(answer=schema), i, final, 200)
        ended += held_to(generation, reply, schema)
    assert ended > len(corpus["schemas"][::2]) // 2, "most replies should end within 200 tokens"


def test_forced_and_strict_calls_validate_and_name_declared_tools(o200k_tokenizer):
    tools = (
        ToolFormat("functions.get_weather", SCHEMAS["enum_and_bounds"], strict=True),
        ToolFormat("functions.lookup", SCHEMAS["any_of_and_refs"], strict=True),
    )
    for call in ("required", "functions.lookup"):
        fmt = ReplyFormat(tools=tools, call=call)
        allowed = allowed_next(compile_reply(fmt, o200k_tokenizer), [CHANNEL])
        assert o200k_tokenizer.encode("commentary")[0] in allowed
        assert o200k_tokenizer.encode("final")[0] not in allowed
        # The call's header opens the reply, as the server writes it (`forced_call`).
        prefix = forced_call("functions." if call == "required" else call, o200k_tokenizer)
        for seed in range(3):
            generation, reply = noisy_reply(o200k_tokenizer, fmt, seed, prefix)
            assert generation.output[-1] == CALL and reply.called_tool
            (part,) = reply.tool_calls
            assert part.name in ({"get_weather", "lookup"} if call == "required" else {"lookup"})
            schema = tools[0 if part.name == "get_weather" else 1].schema
            jsonschema.validate(json.loads(part.text), schema)


# ------------------------------------------------------------------ the tiny checkpoint


def test_tiny_checkpoint_replies_validate(tiny_model, o200k_env, o200k_tokenizer):
    from gptoss_lite.engine.runner import load

    runner = load(tiny_model, device="cpu", dtype="fp32", context=512)
    final = [CHANNEL, *o200k_tokenizer.encode("final"), MESSAGE]
    prompt = user_prompt(Conversation(), "Give me JSON.", o200k_tokenizer) + final
    for name in ("enum_and_bounds", "nested_arrays"):
        grammar = compile_reply(ReplyFormat(answer=SCHEMAS[name]), o200k_tokenizer)
        for seed in range(2):
            sampling = Sampling(max_new_tokens=120, seed=seed)
            generation = Generation(runner, prompt, sampling, STOP_TOKENS, grammar, final)
            tokens = list(generation)
            reply = read_reply([*final, *tokens], o200k_tokenizer)
            assert generation.finish_reason == "stop", f"{name} seed {seed}: no end in 120 tokens"
            jsonschema.validate(json.loads(reply.text()), SCHEMAS[name])


def test_unconstrained_generation_is_untouched_by_a_free_mask(
    tiny_model, o200k_env, o200k_tokenizer
):
    """A grammar that allows every text token changes nothing: same tokens, same seed."""
    from gptoss_lite.engine.runner import load

    runner = load(tiny_model, device="cpu", dtype="fp32", context=256)
    prompt = user_prompt(Conversation(), "Hi", o200k_tokenizer)
    analysis = [CHANNEL, *o200k_tokenizer.encode("analysis"), MESSAGE]
    grammar = compile_reply(ReplyFormat(answer=None), o200k_tokenizer)
    free = list(Generation(runner, prompt + analysis, Sampling(8, seed=5), STOP_TOKENS))
    held = Generation(
        runner, prompt + analysis, Sampling(8, seed=5), STOP_TOKENS, grammar, analysis
    )
    assert list(held) == free


# ------------------------------------------------------------------ the server


class Answer(BaseModel):
    level: str = Field(pattern="^(low|mid|high)$")
    score: int = Field(ge=-5, le=5)
    tags: list[str] = Field(max_length=3)


@pytest.fixture
def noise_service(o200k_tokenizer):
    service = Service(NoiseRunner(o200k_tokenizer, context=8192), o200k_tokenizer, "gpt-oss-test")
    yield service
    service.close()


def test_openai_parse_helpers_return_the_pydantic_object(noise_service, serve_http):
    client = OpenAI(base_url=serve_http(noise_service) + "/v1", api_key="x", max_retries=0)
    for seed in range(2):
        chat = client.chat.completions.parse(
            model="gpt-oss-test",
            messages=[{"role": "user", "content": "json please"}],
            response_format=Answer,
            seed=seed,
            max_completion_tokens=600,
        )
        assert chat.choices[0].finish_reason == "stop"
        assert isinstance(chat.choices[0].message.parsed, Answer)
    response = client.responses.parse(
        model="gpt-oss-test", input="json please", text_format=Answer, max_output_tokens=600
    )
    assert isinstance(response.output_parsed, Answer)


def test_streamed_replies_validate_on_both_apis(noise_service, serve_http):
    client = OpenAI(base_url=serve_http(noise_service) + "/v1", api_key="x", max_retries=0)
    schema = SCHEMAS["person"]
    format_ = {
        "type": "json_schema",
        "json_schema": {"name": "p", "schema": schema, "strict": True},
    }
    for seed in range(2):
        chunks = client.chat.completions.create(
            model="gpt-oss-test",
            messages=[{"role": "user", "content": "x"}],
            response_format=format_,
            seed=seed,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        jsonschema.validate(json.loads(text), schema)
    events = client.responses.create(
        model="gpt-oss-test",
        input="x",
        text={"format": {"type": "json_schema", "name": "p", "schema": schema, "strict": True}},
        stream=True,
    )
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    jsonschema.validate(json.loads(text), schema)


def test_a_forced_strict_call_validates(noise_service, serve_http):
    client = OpenAI(base_url=serve_http(noise_service) + "/v1", api_key="x", max_retries=0)
    schema = SCHEMAS["enum_and_bounds"]
    tool = {"type": "function", "function": {"name": "rate", "parameters": schema, "strict": True}}
    other = {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
    for seed in range(3):
        chat = client.chat.completions.create(
            model="gpt-oss-test",
            messages=[{"role": "user", "content": "x"}],
            tools=[other, tool],
            tool_choice="required",
            seed=seed,
        )
        (call,) = chat.choices[0].message.tool_calls
        assert call.function.name in ("rate", "other")
        if call.function.name == "rate":
            jsonschema.validate(json.loads(call.function.arguments), schema)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"response_format": {"type": "xml"}}, "response_format.type"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "n",
                        "strict": True,
                        "schema": {
                            "type": "object",
                            "properties": {"a": {"type": "string"}},
                            "required": ["a"],
                        },
                    },
                }
            },
            "response_format.json_schema.schema.additionalProperties",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "strict": True,
                            "parameters": {
                                "type": "object",
                                "properties": {"a": {}},
                                "additionalProperties": False,
                            },
                        },
                    }
                ]
            },
            "tools.0.function.parameters.required",
        ),
    ],
)
def test_bad_schemas_are_a_400_naming_the_field(noise_service, serve_http, body, param):
    url = serve_http(noise_service) + "/v1/chat/completions"
    request = {"model": "gpt-oss-test", "messages": [{"role": "user", "content": "x"}], **body}
    answer = httpx.post(url, json=request, timeout=30)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param
    assert noise_service.runner.prompts == []  # refused before anything was generated


def test_a_lenient_schema_ignores_what_it_cannot_enforce(noise_service, serve_http):
    url = serve_http(noise_service) + "/v1/chat/completions"
    schema = {
        "type": "object",
        "properties": {"a": {"type": "integer"}},
        "required": ["a"],
        "not": {},
    }
    format_ = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    request = {
        "model": "gpt-oss-test",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": format_,
    }
    answer = httpx.post(url, json=request, timeout=60)
    assert answer.status_code == 200, answer.text
    assert isinstance(json.loads(answer.json()["choices"][0]["message"]["content"])["a"], int)
    assert compiler_for(noise_service.tokenizer) is compiler_for(noise_service.tokenizer)


def test_ollama_format_holds_chat_and_generate(noise_service, serve_http):
    client = ollama.Client(host=serve_http(noise_service), timeout=60)
    schema = SCHEMAS["person"]
    for seed in range(2):
        reply = client.chat(
            model="gpt-oss-test",
            messages=[{"role": "user", "content": "x"}],
            format=schema,
            options={"seed": seed},
        )
        assert reply.done_reason == "stop"
        jsonschema.validate(json.loads(reply.message.content), schema)
    reply = client.generate(model="gpt-oss-test", prompt="x", format="json", options={"seed": 3})
    assert reply.done_reason == "stop" and isinstance(json.loads(reply.response), dict)
    with pytest.raises(ollama.ResponseError, match="format"):
        client.generate(model="gpt-oss-test", prompt="x", format="json", raw=True)


# ------------------------------------------------------------------ the CLI


@pytest.fixture
def schema_file(tmp_path):
    path = tmp_path / "person.json"
    path.write_text(json.dumps(SCHEMAS["person"]))
    return path


def test_run_prints_the_json_alone(cli, tiny_model, schema_file, monkeypatch, o200k_tokenizer):
    """The model's logits are noise (`Runner.generate` replaced): the JSON is the constraint's."""
    monkeypatch.setattr(
        Runner, "generate", lambda _, ids, sampling, **kw: noise(o200k_tokenizer, sampling, **kw)
    )
    for seed in range(2):
        result = cli("run", "-m", tiny_model, "--json-schema", schema_file, "--seed", seed, "x")
        assert result.exit_code == 0, result.output
        jsonschema.validate(json.loads(result.stdout), SCHEMAS["person"])
        assert result.stdout == result.stdout.strip() + "\n"  # the JSON alone, no reasoning


def test_run_cut_before_its_json_is_complete_is_an_error(cli, tiny_model, o200k_tokenizer):
    """The shortest complete reply, <|channel|>final<|message|>{}<|return|>, is 5 tokens."""
    shortest = "<|channel|>final<|message|>{}<|return|>"
    assert len(o200k_tokenizer.encode(shortest, allow_special=True)) == 5
    result = cli("run", "-m", tiny_model, "--json-object", "-n", "4", "--seed", "0", "x")
    assert result.exit_code == 1, result.output
    assert result.stderr.splitlines()[-1] == f"error: {INCOMPLETE}"
    assert result.stdout.strip() == ""


def test_run_refuses_a_schema_it_cannot_enforce_in_one_line(cli, tiny_model, tmp_path):
    unenforced, broken = tmp_path / "not.json", tmp_path / "broken.json"
    unenforced.write_text('{"type": "object", "not": {"required": ["a"]}}')
    broken.write_text("{")
    for path, words in ((unenforced, "not"), (broken, "cannot read it as JSON")):
        result = cli("run", "-m", tiny_model, "--json-schema", path, "x")
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
        (line,) = result.stderr.splitlines()
        assert line.startswith("error: ") and words in line, line
    result = cli("run", "-m", tiny_model, "--json-schema", broken, "--json-object", "x")
    assert result.stderr.startswith("error: use --json-schema FILE or --json-object")


def test_bench_json_schema_gives_the_ratio_and_the_compile_time(cli, tiny_model, schema_file):
    args = ["bench", "-m", tiny_model, "--device", "cpu", "--prompt-tokens", "8",
            "--gen-tokens", "4", "-r", "2", "--json-schema", schema_file, "--json"]  # fmt: skip
    result = cli(*args)
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    free, held = payload["results"]
    assert (free["engine"], held["engine"]) == ("gptoss-lite, free", "gptoss-lite, constrained")
    assert len(free["decode_runs"]) == len(held["decode_runs"]) == 2
    ratio = payload["constrained"]["ratio"]
    assert ratio == pytest.approx(held["decode_tok_s"] / free["decode_tok_s"])
    assert payload["constrained"]["compile_s"] > payload["constrained"]["cached_s"] > 0
