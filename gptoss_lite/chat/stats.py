"""Numbers about one reply: prompt tokens prefilled or reused, tokens generated, timings.

`ReplyStats` is what `--verbose` and `--json` report. The prefill time is the wait for the first
token (the forward passes over the new prompt tokens and one sample); the decode time covers the
tokens after it, one forward pass each, so the decode rate is (generated - 1) / decode time. Only
time spent inside the generator counts, never the caller's printing.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ReplyStats:
    """Token counts and timings of one reply."""

    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose keys and values were already in the cache
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefilled_tokens(self) -> int:
        """Prompt tokens that went through the model."""
        return self.prompt_tokens - self.cached_tokens

    @property
    def prefill_rate(self) -> float:
        """Prompt tokens per second (new tokens only; 0 when unmeasured)."""
        return _rate(self.prefilled_tokens, self.prefill_seconds)

    @property
    def decode_rate(self) -> float:
        """Generated tokens per second after the first one (0 when unmeasured)."""
        return _rate(self.generated_tokens - 1, self.decode_seconds)


def _rate(tokens: int, seconds: float) -> float:
    return tokens / seconds if tokens > 0 and seconds > 0 else 0.0
