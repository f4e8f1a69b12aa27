"""Replies held to a format: the compiled grammar of a `ReplyFormat`, one compiler a tokenizer.

`compile_reply(format, tokenizer)` checks every schema in the format (`json_schema.check_schema`:
bounds, and the strict subset where asked), writes the reply's grammar (`reply_grammar`) and
compiles it with the tokenizer's `GrammarCompiler`, which keeps what it compiled, so a schema
sent again costs a lookup. Every refusal is a `GptossError` (a `SchemaError` says where in the
schema) raised before anything is generated. The `Grammar` then makes each generation's
`GrammarMask` (see `session.Generation`).
"""

from __future__ import annotations

import threading

from ..chat.json_schema import check_schema
from ..chat.reply_grammar import ReplyFormat, reply_grammar
from ..chat.tokenizer import Tokenizer
from ..chat.tokens import GRAMMAR_END
from .grammar import Grammar, GrammarCompiler

_compilers: dict[int, tuple[Tokenizer, GrammarCompiler]] = {}  # by id(tokenizer); keeps it alive
_lock = threading.Lock()


def compile_reply(reply: ReplyFormat, tokenizer: Tokenizer) -> Grammar:
    """The grammar of `reply` for `tokenizer`'s vocabulary (its schemas checked first)."""
    if reply.answer is not None:
        check_schema(reply.answer, strict=False)
    for tool in reply.tools:
        if tool.schema is not None:
            check_schema(tool.schema, strict=tool.strict)
    return compiler_for(tokenizer).compile(reply_grammar(reply))


def compiler_for(tokenizer: Tokenizer) -> GrammarCompiler:
    """The one grammar compiler of `tokenizer`."""
    with _lock:
        if id(tokenizer) not in _compilers:
            compiler = GrammarCompiler(tokenizer.encoding, GRAMMAR_END, tokenizer.n_vocab)
            _compilers[id(tokenizer)] = (tokenizer, compiler)
        return _compilers[id(tokenizer)][1]
