"""Token log-probabilities in the shapes of the APIs: the one reading of `engine.logprobs`.

`entries` gives the list Chat Completions (`choices[].logprobs.content`), the Responses API
(`output_text.logprobs`) and Ollama (`logprobs`) share: per token its text, log-probability,
UTF-8 bytes and `top_logprobs` alike. `legacy` gives the older Completions object: parallel
lists of tokens, values, `{token: value}` alternatives and character offsets into the text.
A token that is part of a UTF-8 character has the text of its bytes with U+FFFD for the rest;
its `bytes` are exact.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

from ..chat.tokenizer import Tokenizer
from ..engine.logprobs import TokenLogprob


def entries(logprobs: Sequence[TokenLogprob], tokenizer: Tokenizer) -> list[dict]:
    """Chat Completions', Responses' and Ollama's logprobs of the tokens."""
    return [
        {**_token(lp.token, lp.logprob, tokenizer), "top_logprobs": _top(lp, tokenizer)}
        for lp in logprobs
    ]


def legacy(logprobs: Sequence[TokenLogprob], tokenizer: Tokenizer, offset: int = 0) -> dict:
    """The Completions API's logprobs object; `offset` is where the tokens' text starts."""
    texts = [_text(lp.token, tokenizer) for lp in logprobs]
    offsets = list(accumulate(map(len, texts), initial=offset))[:-1]
    return {
        "tokens": texts,
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{_text(t, tokenizer): v for t, v in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def _top(logprob: TokenLogprob, tokenizer: Tokenizer) -> list[dict]:
    return [_token(token, value, tokenizer) for token, value in logprob.top]


def _token(token: int, value: float, tokenizer: Tokenizer) -> dict:
    raw = tokenizer.token_bytes(token)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": value, "bytes": list(raw)}


def _text(token: int, tokenizer: Tokenizer) -> str:
    return tokenizer.token_bytes(token).decode("utf-8", errors="replace")
