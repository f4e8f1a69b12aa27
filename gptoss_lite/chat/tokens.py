"""The special tokens of o200k_harmony and the harmony format: ids, markup, stop tokens, pattern.

Every module that needs a special token's id or text imports it from here. Ids below `N_TEXT`
are BPE ranks; from `N_TEXT` to `N_VOCAB - 1` every id is a special token: the harmony format
tokens by name, `<|endofprompt|>`, and `<|reserved_N|>` for the rest (200018 has both names, as
tiktoken's o200k_harmony has). `O200K_PATTERN` is the pre-tokenizer regex the vocabulary was
trained with; a `tokenizer.json` with another one tokenizes differently and is refused.
"""

from __future__ import annotations

STARTOFTEXT = 199998
ENDOFTEXT = 199999
RETURN = 200002
CONSTRAIN = 200003
CHANNEL = 200005
START = 200006
END = 200007
MESSAGE = 200008
CALL = 200012
GRAMMAR_END = 200013  # <|reserved_200013|>, never generated: a grammar's own end
ENDOFPROMPT = 200018
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
MARKUP = {token: name for name, token in NAMED_SPECIALS.items()}  # id -> its text
SPECIAL_TOKENS = {
    **{f"<|reserved_{i}|>": i for i in range(N_TEXT, N_VOCAB) if i not in MARKUP},
    **NAMED_SPECIALS,
    "<|endofprompt|>": ENDOFPROMPT,
}

# Generation stops here. Never on <|end|>: it closes the analysis, before the final answer.
STOP_TOKENS = (RETURN, CALL, ENDOFTEXT)
CLOSERS = (END, *STOP_TOKENS)  # each ends the message being generated

O200K_PATTERN = "|".join(
    [
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)
