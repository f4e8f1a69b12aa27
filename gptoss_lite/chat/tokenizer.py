"""Tokenizer: o200k_harmony, the tiktoken encoding gpt-oss was trained with.

`load_tokenizer(model_dir)` builds it offline from the model folder's `tokenizer.json` when there
is one (its byte-level BPE vocab maps strings to ids that equal the tiktoken ranks), and otherwise
asks tiktoken for `o200k_harmony` (from its cache, or a download). A `tokenizer.json` is trusted
only as far as it is checked: its vocabulary must give the ids 0..199997 to one piece each, its
added tokens must be o200k_harmony's at their own ids, and its pre-tokenizer o200k's regex (else
typed text could become control tokens, or split differently from training). `Tokenizer` never
adds a BOS token and treats `<|...|>` markup in text as plain text unless told otherwise;
`StreamDecoder` turns a token stream into text without ever splitting a UTF-8 character.
"""

from __future__ import annotations

import codecs
import functools
import json
from collections.abc import Iterable
from pathlib import Path

import tiktoken

from ..errors import GptossError
from .tokens import N_TEXT, NAMED_SPECIALS, O200K_PATTERN, SPECIAL_TOKENS

_TIKTOKEN_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
_TIKTOKEN_CACHE_NAME = "fb374d419588a4632f3f557e76b4b70aebbca790"  # sha1 of the URL


class Tokenizer:
    """o200k_harmony text <-> token ids. No BOS is ever prepended."""

    def __init__(self, encoding: tiktoken.Encoding, source: str) -> None:
        self.encoding = encoding
        self.source = source  # where it came from, for messages
        self.n_vocab = encoding.n_vocab

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of `text`; with `allow_special`, `<|...|>` markup becomes special tokens."""
        if allow_special:
            return self.encoding.encode(text, allowed_special="all")
        return self.encoding.encode_ordinary(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids` (special tokens as their markup, bad UTF-8 as U+FFFD)."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """Raw bytes of `ids`; ids outside the vocabulary give nothing."""
        return b"".join(self.token_bytes(i) for i in ids)

    def token_bytes(self, token: int) -> bytes:
        """Bytes of one token: a BPE piece, or a special token's markup."""
        if not 0 <= token < self.n_vocab:
            return b""
        return self.encoding.decode_single_token_bytes(token)

    @functools.cached_property
    def max_token_bytes(self) -> int:
        """The most bytes of text one ordinary token spells (128 in o200k): a text of n bytes
        is at least n / max_token_bytes tokens."""
        return max(len(self.token_bytes(i)) for i in range(N_TEXT))

    def is_special(self, token: int) -> bool:
        """True for special tokens, and for ids that are no token at all."""
        return not 0 <= token < N_TEXT

    def stream(self) -> StreamDecoder:
        """A fresh incremental decoder for one stream of tokens."""
        return StreamDecoder(self)


class StreamDecoder:
    """Token-at-a-time detokenizer that holds back an incomplete UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token: int) -> str:
        """The text that `token` completes (may be empty while a character is split)."""
        return self._utf8.decode(self._tokenizer.token_bytes(token))

    def flush(self) -> str:
        """Whatever is held back, as U+FFFD if the stream ended mid-character."""
        return self._utf8.decode(b"", final=True)


def load_tokenizer(model_dir: str | Path | None = None) -> Tokenizer:
    """The o200k_harmony tokenizer: from `<model_dir>/tokenizer.json`, else from tiktoken."""
    if model_dir is not None:
        path = Path(model_dir) / "tokenizer.json"
        if path.is_file():
            return Tokenizer(encoding_from_tokenizer_json(path), source=str(path))
    return Tokenizer(_tiktoken_encoding(model_dir), source="tiktoken o200k_harmony")


def encoding_from_tokenizer_json(path: Path) -> tiktoken.Encoding:
    """Rebuild o200k_harmony from a Hugging Face `tokenizer.json`, offline."""
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise GptossError(f"cannot read {path} as a gpt-oss tokenizer.json ({exc!r})") from exc
    return encoding_from_spec(spec, path)


def encoding_from_spec(spec: object, path: Path) -> tiktoken.Encoding:
    """o200k_harmony from the parsed JSON of `path`, refusing one whose vocabulary, special
    tokens or pre-tokenizer are not o200k_harmony's."""
    try:
        to_byte = _unicode_to_byte()
        vocab = spec["model"]["vocab"]
        ranks = {bytes(to_byte[c] for c in s): i for s, i in vocab.items()}
        pre_tokenizer = spec["pre_tokenizer"]
        steps = pre_tokenizer["pretokenizers"]
        added = [(t["content"], t["id"]) for t in spec["added_tokens"]]
    except (ValueError, LookupError, TypeError, AttributeError) as exc:
        raise GptossError(f"cannot read {path} as a gpt-oss tokenizer.json ({exc!r})") from exc
    problem = _vocab_problem(vocab, ranks) or _specials_problem(added)
    problem = problem or _pretokenizer_problem(pre_tokenizer, steps)
    if problem:
        raise GptossError(f"{path} is not o200k_harmony: {problem}")
    return tiktoken.Encoding(
        name="o200k_harmony",
        pat_str=O200K_PATTERN,
        mergeable_ranks=ranks,
        special_tokens=SPECIAL_TOKENS,
    )


def _vocab_problem(vocab: dict, ranks: dict[bytes, int]) -> str | None:
    """What is wrong with the BPE vocabulary: its ids must be 0..N_TEXT-1, each once."""
    for text, rank in vocab.items():
        if type(rank) is not int or not 0 <= rank < N_TEXT:
            what = "a special-token id" if isinstance(rank, int) and rank >= N_TEXT else "no rank"
            return f"vocabulary entry {text!r} maps to {rank!r}, {what}"
    if len(vocab) != N_TEXT or len(set(vocab.values())) != N_TEXT or len(ranks) != N_TEXT:
        return f"the vocabulary does not give each of the ids 0..{N_TEXT - 1} to one piece"
    return None


def _specials_problem(added: list[tuple[object, object]]) -> str | None:
    """What is wrong with `added_tokens`: each must be one of o200k_harmony's special tokens, at
    its own id, once; the harmony format tokens must all be there."""
    seen: dict[object, object] = {}
    for text, token in added:
        if token in seen:
            return f"id {token} is given to both {seen[token]!r} and {text!r}"
        seen[token] = text
        if SPECIAL_TOKENS.get(text) != token:  # type: ignore[call-overload]
            return f"added token {text!r} has id {token!r}, not one of o200k_harmony's"
    for text, token in NAMED_SPECIALS.items():
        if seen.get(token) != text:
            return f"{text} is missing (it must have id {token})"
    return None


def _pretokenizer_problem(pre_tokenizer: dict, steps: object) -> str | None:
    """The pre-tokenizer must split with o200k's regex, then map bytes without another regex."""
    expected_split = {"type": "Split", "pattern": {"Regex": O200K_PATTERN}, "behavior": "Isolated"}
    ok = (
        pre_tokenizer.get("type") == "Sequence"
        and isinstance(steps, list)
        and all(isinstance(step, dict) for step in steps)
        and len(steps) >= 1
        and all(steps[0].get(key) == value for key, value in expected_split.items())
        and steps[0].get("invert") is False
        and all(s.get("type") == "ByteLevel" and s.get("use_regex") is False for s in steps[1:])
    )
    return None if ok else "its pre-tokenizer is not o200k's regex split and a byte-level map"


def _unicode_to_byte() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest for
    chr(256 + n) in byte order."""
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    others = [b for b in range(256) if b not in printable]
    table = {chr(b): b for b in printable}
    table.update({chr(256 + n): b for n, b in enumerate(others)})
    return table


def _tiktoken_encoding(model_dir: str | Path | None) -> tiktoken.Encoding:
    try:
        return tiktoken.get_encoding("o200k_harmony")
    except (OSError, ValueError) as exc:  # requests' network errors are OSErrors
        where = f"{model_dir} has no tokenizer.json and " if model_dir is not None else ""
        raise GptossError(
            f"no tokenizer: {where}tiktoken cannot download o200k_base; save {_TIKTOKEN_URL} "
            f"as <dir>/{_TIKTOKEN_CACHE_NAME} and set TIKTOKEN_CACHE_DIR=<dir>"
        ) from exc
