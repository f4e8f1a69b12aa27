"""Pytest plugin for the `run` and `chat` command tests: a tiny checkpoint and a way to invoke them.

`tiny_model` writes, once per session, random weights for the `tiny` preset, which has the full
201,088-token vocabulary so the real tokenizer and harmony work end to end. `cli` invokes the
`gptoss-lite` group through click's CliRunner with the o200k vocabulary available offline and the
Hub switched off. `scripted` replaces `Runner.generate` with a fixed harmony completion, so the
display can be checked on real reasoning / answer / tool-call structure that random weights
never produce.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gptoss_lite.checkpoint.synthetic import write_synthetic
from gptoss_lite.cli import main
from gptoss_lite.config import preset
from gptoss_lite.engine.runner import Runner
from gptoss_lite.engine.sampling import Sampling


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint folder of the `tiny` preset (full vocabulary), random weights, seed 0."""
    return write_synthetic(tmp_path_factory.mktemp("tiny") / "ckpt", preset("tiny"), seed=0)


@pytest.fixture
def cli(o200k_env: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Result]:
    """`cli("run", "--model", path, ..., input=None, env=None)` → the Result (stdout, stderr)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in [name for name in os.environ if name.startswith("GPTOSS_LITE_")]:
        monkeypatch.delenv(name)

    def invoke(*args: str, input: str | None = None, env: dict | None = None) -> Result:
        return CliRunner().invoke(main, [str(a) for a in args], input=input, env=env)

    return invoke


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch, o200k_tokenizer) -> Callable[..., list[list[int]]]:
    """`scripted(text, interrupt_after=None)`: every `Runner.generate` call yields the tokens of
    `text` (harmony markup allowed; a list gives the n-th call its n-th text, the last one
    repeating), up to max_new_tokens, raising KeyboardInterrupt after `interrupt_after` of them.
    Returns the list of prompts it was called with."""

    def install(text: str | list[str], interrupt_after: int | None = None) -> list[list[int]]:
        texts = [text] if isinstance(text, str) else text
        replies = [o200k_tokenizer.encode(t, allow_special=True) for t in texts]
        prompts: list[list[int]] = []

        def generate(self: Runner, token_ids, sampling: Sampling, **_):
            prompts.append(list(token_ids))
            self.prefilled = len(prompts[-1])
            reply = replies[min(len(prompts), len(replies)) - 1]
            for n, token in enumerate(reply[: sampling.max_new_tokens]):
                if n == interrupt_after:
                    raise KeyboardInterrupt
                yield token

        monkeypatch.setattr(Runner, "generate", generate)
        return prompts

    return install
