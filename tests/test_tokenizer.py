"""Tokenizer parity with tiktoken's o200k_harmony, through tiktoken and through tokenizer.json.

The tokenizer.json is rebuilt from the real vocabulary with transformers' `TikTokenConverter` and
the special-token list of the HF convert script, as the published gpt-oss tokenizer.json was.
"""

from __future__ import annotations

import copy
import json

import pytest
import requests
import tiktoken
from vocab import o200k_environ

from gptoss_lite.chat.tokenizer import Tokenizer, encoding_from_spec, load_tokenizer
from gptoss_lite.chat.tokens import (
    CALL,
    CHANNEL,
    CONSTRAIN,
    END,
    ENDOFTEXT,
    MESSAGE,
    N_VOCAB,
    NAMED_SPECIALS,
    O200K_PATTERN,
    RETURN,
    SPECIAL_TOKENS,
    START,
    STARTOFTEXT,
)
from gptoss_lite.errors import GptossError

CORPUS = [
    "Hello, world! How's it going? I'M FINE, they'd said.",
    "日本語のテキストと中文文本，还有한국어 문장도 있습니다。",
    "emoji: 👩‍👩‍👧‍👦 🇯🇵 🦜🪿 ❤️‍🔥 ☕️",
    "def f(x: int) -> int:\n\treturn x ** 2  # square\n\n\nclass A:\n    pass\n",
    "tabs\t\t\tand      spaces       and\n\n\n\n   \n  newlines   ",
    " " * 300 + "x" + "\n" * 50,
    "1234567890 3.14159 -0.5e-10 1,000,000 0x1F 2025-06-28 12:30:45",
    "naïve café, São Paulo, Ελληνικά, русский, עברית, العربية, हिन्दी",
    "<|start|>user<|message|>hi<|end|><|return|><|call|><|reserved_200100|><|endofprompt|>",
    "∑ᵢ xᵢ² ≤ ∞ — “quotes” ‘single’ …",
    "https://example.com/a/b?q=1&r=2#frag C:\\Windows\\path",
    "",
]

# The HF convert script's special tokens: named ones, and reserved names for the gaps to 200017.
HF_SPECIALS = {**NAMED_SPECIALS, "<|endofprompt|>": 200018}
HF_SPECIALS |= {
    f"<|reserved_{i}|>": i for i in range(199999, 200018) if i not in HF_SPECIALS.values()
}


@pytest.fixture(scope="module")
def reference(o200k_dir) -> tiktoken.Encoding:
    with o200k_environ(o200k_dir):
        return tiktoken.get_encoding("o200k_harmony")


@pytest.fixture(scope="module")
def hf_model_dir(o200k_dir, reference, tmp_path_factory):
    """A model folder whose tokenizer.json was made the way the published one was."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    names = [name for name, _ in sorted(HF_SPECIALS.items(), key=lambda item: item[1])]
    converter = TikTokenConverter(
        vocab_file=str(o200k_dir / "o200k_base.tiktoken"),
        pattern=reference._pat_str,
        extra_special_tokens=names,
    )
    folder = tmp_path_factory.mktemp("hf-model")
    converter.converted().save(str(folder / "tokenizer.json"))
    return folder


@pytest.fixture(scope="module")
def json_tokenizer(hf_model_dir) -> Tokenizer:
    return load_tokenizer(hf_model_dir)


@pytest.fixture(scope="module", params=["o200k_tokenizer", "json_tokenizer"])
def tokenizer(request) -> Tokenizer:
    """Both routes: tiktoken's own encoding, and the one rebuilt from tokenizer.json."""
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("text", CORPUS)
def test_encode_matches_tiktoken(tokenizer, reference, text):
    assert tokenizer.encode(text) == reference.encode_ordinary(text)
    with_specials = tokenizer.encode(text, allow_special=True)
    assert with_specials == reference.encode(text, allowed_special="all")
    assert tokenizer.decode(with_specials) == text


def test_special_tokens_are_o200k_harmony(tokenizer, reference):
    assert tokenizer.n_vocab == reference.n_vocab == N_VOCAB
    assert tokenizer.encoding._special_tokens == reference._special_tokens
    named = [STARTOFTEXT, ENDOFTEXT, RETURN, CONSTRAIN, CHANNEL, START, END, MESSAGE, CALL]
    assert named == [199998, 199999, 200002, 200003, 200005, 200006, 200007, 200008, 200012]
    for name, token in NAMED_SPECIALS.items():
        assert tokenizer.encode(name, allow_special=True) == [token]
    for token in (200000, 200013, 200018, 200500, N_VOCAB - 1):
        assert tokenizer.decode([token]) == reference.decode([token])
    assert tokenizer.decode([N_VOCAB - 1]) == "<|reserved_201087|>"


def test_each_route_reports_its_source(o200k_tokenizer, json_tokenizer, hf_model_dir):
    assert o200k_tokenizer.source == "tiktoken o200k_harmony"
    assert json_tokenizer.source == str(hf_model_dir / "tokenizer.json")


def test_no_bos_and_markup_stays_text(tokenizer):
    assert tokenizer.encode("") == []
    assert tokenizer.encode("hi") == [3686]
    plain = tokenizer.encode("<|end|>")
    assert not any(tokenizer.is_special(t) for t in plain)
    assert tokenizer.decode(plain) == "<|end|>"


@pytest.mark.parametrize("text", CORPUS)
def test_stream_decoder_matches_decode(tokenizer, text):
    stream = tokenizer.stream()
    pieces = [stream.push(t) for t in tokenizer.encode(text)] + [stream.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_stream_decoder_holds_back_a_split_character(tokenizer):
    ids = tokenizer.encode("🦜🪿")
    assert any("\ufffd" in tokenizer.decode([t]) for t in ids), "no split character to test"
    stream = tokenizer.stream()
    pieces = [stream.push(t) for t in ids]
    assert "" in pieces
    assert "".join(pieces) + stream.flush() == "🦜🪿"


def test_stream_decoder_flushes_an_unfinished_character(tokenizer):
    first = tokenizer.encode("🦜")[0]
    stream = tokenizer.stream()
    assert stream.push(first) == ""
    assert stream.flush() == "\ufffd"


def test_ids_outside_the_vocabulary_decode_to_nothing(tokenizer):
    assert tokenizer.decode([3686, N_VOCAB, -1, 10**9]) == "hi"
    assert tokenizer.is_special(N_VOCAB) and not tokenizer.is_special(3686)


def test_model_dir_without_tokenizer_json_uses_tiktoken(o200k_env, tmp_path):
    assert load_tokenizer(tmp_path).source == "tiktoken o200k_harmony"


def test_offline_without_vocabulary_is_one_line_naming_the_cache(tmp_path, monkeypatch):
    def unreachable(url):
        raise requests.ConnectionError(f"cannot reach {url}")

    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget loaded encodings
    monkeypatch.setattr(tiktoken.load, "read_file", unreachable)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    with pytest.raises(GptossError) as info:
        load_tokenizer(tmp_path)
    message = str(info.value)
    assert "TIKTOKEN_CACHE_DIR" in message and "fb374d419588a4632f3f557e76b4b70aebbca790" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    "content",
    ["version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", '{"model": {}}'],
)
def test_unreadable_tokenizer_json_is_a_gptoss_error(tmp_path, content):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(GptossError, match="tokenizer.json"):
        load_tokenizer(tmp_path)


def test_foreign_tokenizer_json_is_rejected(tmp_path):
    spec = {
        "model": {"vocab": {"a": 0}},
        "pre_tokenizer": {"pretokenizers": [{"pattern": {"Regex": "."}}]},
        "added_tokens": [{"content": "<|start|>", "id": 1}],
    }
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(GptossError, match="not o200k_harmony"):
        load_tokenizer(tmp_path)


def test_special_tokens_and_pattern_are_tiktokens(reference):
    assert reference._special_tokens == SPECIAL_TOKENS
    assert reference._pat_str == O200K_PATTERN


@pytest.fixture(scope="module")
def hf_spec(hf_model_dir) -> dict:
    """The parsed tokenizer.json of the real vocabulary."""
    return json.loads((hf_model_dir / "tokenizer.json").read_text(encoding="utf-8"))


def _added(spec: dict, text: str) -> dict:
    return next(t for t in spec["added_tokens"] if t["content"] == text)


def _split(spec: dict) -> dict:
    return spec["pre_tokenizer"]["pretokenizers"][0]


TAMPERED = {
    "text mapped to a special id": (
        lambda s: s["model"]["vocab"].update(hello=START),
        "'hello' maps to 200006, a special-token id",
    ),
    "a rank that is not an int": (
        lambda s: s["model"]["vocab"].update(hello="7"),
        "'hello' maps to '7', no rank",
    ),
    "two pieces share an id": (
        lambda s: s["model"]["vocab"].update(hello=s["model"]["vocab"]["world"]),
        "does not give each of the ids 0..199997 to one piece",
    ),
    "a piece missing": (
        lambda s: s["model"]["vocab"].pop("world"),
        "does not give each of the ids",
    ),
    "special token at another id": (
        lambda s: _added(s, "<|start|>").update(id=200100),
        "'<|start|>' has id 200100, not one of o200k_harmony's",
    ),
    "special token text changed": (
        lambda s: _added(s, "<|start|>").update(content="<|strat|>"),
        "'<|strat|>' has id 200006",
    ),
    "ordinary text added as a special token": (
        lambda s: s["added_tokens"].append({"content": "hello", "id": 200500}),
        "'hello' has id 200500",
    ),
    "special id given twice": (
        lambda s: s["added_tokens"].append({"content": "<|start|>", "id": START}),
        "id 200006 is given to both '<|start|>' and '<|start|>'",
    ),
    "format token missing": (
        lambda s: s["added_tokens"].remove(_added(s, "<|call|>")),
        "<|call|> is missing (it must have id 200012)",
    ),
    "pre-tokenizer regex replaced": (
        lambda s: _split(s).update(pattern={"Regex": r"\S+|\s+"}),
        "pre-tokenizer is not o200k's",
    ),
    "pre-tokenizer split inverted": (
        lambda s: _split(s).update(invert=True),
        "pre-tokenizer is not o200k's",
    ),
    "a second regex after the split": (
        lambda s: s["pre_tokenizer"]["pretokenizers"][1].update(use_regex=True),
        "pre-tokenizer is not o200k's",
    ),
    "pre-tokenizer not a sequence": (
        lambda s: s.update(pre_tokenizer={**_split(s), "pretokenizers": []}),
        "pre-tokenizer is not o200k's",
    ),
}


@pytest.mark.parametrize("name", TAMPERED)
def test_tampered_tokenizer_json_is_refused_in_one_line(hf_spec, hf_model_dir, name):
    change, problem = TAMPERED[name]
    spec = {
        **hf_spec,
        "model": {**hf_spec["model"], "vocab": dict(hf_spec["model"]["vocab"])},
        "added_tokens": [dict(t) for t in hf_spec["added_tokens"]],
        "pre_tokenizer": copy.deepcopy(hf_spec["pre_tokenizer"]),
    }
    change(spec)
    path = hf_model_dir / "tokenizer.json"
    with pytest.raises(GptossError) as info:
        encoding_from_spec(spec, path)
    message = str(info.value)
    assert message.startswith(f"{path} is not o200k_harmony: ") and "\n" not in message
    assert problem in message


def test_tampered_tokenizer_json_file_is_refused_before_use(hf_spec, tmp_path):
    spec = {**hf_spec, "model": {**hf_spec["model"], "vocab": dict(hf_spec["model"]["vocab"])}}
    spec["model"]["vocab"]["hello"] = START  # typed "hello" would become <|start|>
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec), encoding="utf-8")
    with pytest.raises(GptossError, match=f"{tmp_path / 'tokenizer.json'} is not o200k_harmony"):
        load_tokenizer(tmp_path)
