"""Tokenizer: o200k_harmony, the tiktoken encoding gpt-oss was trained with.

`load_tokenizer(model_dir)` builds it offline from the model folder's `tokenizer.json` when there
is one (its byte-level BPE vocab maps strings to ids that equal the tiktoken ranks), and otherwise
asks tiktoken for `o200k_harmony` (from its cache, or a download). `Tokenizer` never adds a BOS
token and treats `<|...|>` markup in text as plain text unless told otherwise; `StreamDecoder`
turns a token stream into text without ever splitting a UTF-8 character across two pieces.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterable
from pathlib import Path

import tiktoken

from ..errors import GptossError

STARTOFTEXT = 199998
ENDOFTEXT = 199999
RETURN = 200002
CONSTRAIN = 200003
CHANNEL = 200005
START = 200006
END = 200007
MESSAGE = 200008
CALL = 200012
N_TEXT = 199998  # ids below are BPE ranks, ids from here on are special tokens
N_VOCAB = 201088

NAMED_SPECIALS = {
    "<|startoftext|>": STARTOFTEXT,
    "<|endoftext|>": ENDOFTEXT,
    "<|return|>": RETURN,
    "<|constrain|>": CONSTRAIN,
    "<|channel|>": CHANNEL,
    "<|start|>": START,
    "<|end|>": END,
    "<|message|>": MESSAGE,
    "<|call|>": CALL,
}
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
        to_byte = _unicode_to_byte()
        ranks = {bytes(to_byte[c] for c in s): i for s, i in spec["model"]["vocab"].items()}
        pattern = spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"]
        added = {t["content"]: t["id"] for t in spec["added_tokens"]}
    except (OSError, ValueError, LookupError, TypeError) as exc:
        raise GptossError(f"cannot read {path} as a gpt-oss tokenizer.json ({exc!r})") from exc
    for name, token in NAMED_SPECIALS.items():
        if added.get(name) != token:
            raise GptossError(
                f"{path} is not o200k_harmony: {name} is {added.get(name)}, not {token}"
            )
    # o200k_harmony calls every other id up to 201087 <|reserved_N|>; HF stops at 200018.
    named = set(NAMED_SPECIALS.values())
    reserved = {f"<|reserved_{i}|>": i for i in range(N_TEXT, N_VOCAB) if i not in named}
    return tiktoken.Encoding(
        name="o200k_harmony",
        pat_str=pattern,
        mergeable_ranks=ranks,
        special_tokens=reserved | added,
    )


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
