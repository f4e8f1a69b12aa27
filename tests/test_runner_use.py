"""The runner's one KV cache under shared use, broken models, progress, and finding a model.

Every pattern that once corrupted the cache (threads, interleaved generators, a generator
resumed after `logits()`) must either give the tokens of the same call made alone or raise a
`GptossError`; never other tokens.
"""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
from huggingface_hub import constants

import gptoss_lite
from gptoss_lite import GptossError
from gptoss_lite.cli.common import Progress
from gptoss_lite.engine.runner import BUSY, TAKEN_OVER, find_model

pytest_plugins = ["cli_fixtures"]  # tiny_model, cli

PROMPTS = [[5, 17, 300, 42], [7, 7, 9], [100, 200, 300, 400, 500], [3]]
N = 12  # tokens per generation; greedy, so the reference is exact


@pytest.fixture(scope="module")
def runner(checkpoint):
    return gptoss_lite.load(checkpoint("g1"), device="cpu", dtype=torch.float32, context=64)


@pytest.fixture(scope="module")
def reference(runner):
    """Each prompt's tokens, generated alone."""
    return [list(runner.generate(p, max_new_tokens=N, temperature=0)) for p in PROMPTS]


def test_threads_get_their_own_tokens_or_an_error(runner, reference):
    outputs, errors = [[] for _ in PROMPTS], [None] * len(PROMPTS)
    start = threading.Barrier(len(PROMPTS))

    def work(i: int) -> None:
        start.wait()
        try:
            for token in runner.generate(PROMPTS[i], max_new_tokens=N, temperature=0):
                outputs[i].append(token)
        except GptossError as exc:
            errors[i] = str(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for out, error, ref in zip(outputs, errors, reference, strict=True):
        assert out == ref[: len(out)]  # whatever came out is right
        assert error in (None, BUSY, TAKEN_OVER)
        assert error is not None or out == ref
    # The runner still works afterwards.
    assert list(runner.generate(PROMPTS[0], max_new_tokens=N, temperature=0)) == reference[0]


def test_interleaved_generators_in_one_thread(runner, reference):
    first = runner.generate(PROMPTS[0], max_new_tokens=N, temperature=0)
    assert next(first) == reference[0][0]
    second = runner.generate(PROMPTS[1], max_new_tokens=N, temperature=0)
    assert list(second) == reference[1]
    with pytest.raises(GptossError, match="taken over by a later"):
        next(first)


def test_a_generator_resumed_after_logits_raises(runner, reference, checkpoint):
    generation = runner.generate(PROMPTS[2], max_new_tokens=N, temperature=0)
    assert [next(generation), next(generation)] == reference[2][:2]
    logits = runner.logits(PROMPTS[3])
    fresh = gptoss_lite.load(checkpoint("g1"), device="cpu", dtype=torch.float32, context=64)
    torch.testing.assert_close(logits, fresh.logits(PROMPTS[3]), rtol=0, atol=0)
    with pytest.raises(GptossError, match="taken over by a later"):
        next(generation)


def test_a_call_while_another_computes_is_refused(runner, reference):
    computing, release = threading.Event(), threading.Event()

    def slow(done: int, total: int) -> None:  # runs inside the prefill, holding the cache
        computing.set()
        release.wait(timeout=30)

    runner.progress = slow
    try:
        worker = threading.Thread(target=runner.logits, args=(PROMPTS[0],))
        worker.start()
        assert computing.wait(timeout=30)
        with pytest.raises(GptossError, match="already computing"):
            runner.generate(PROMPTS[1], max_new_tokens=N, temperature=0)
        with pytest.raises(GptossError, match="already computing"):
            runner.logits(PROMPTS[1])
        release.set()
        worker.join()
    finally:
        runner.progress = None
    assert list(runner.generate(PROMPTS[1], max_new_tokens=N, temperature=0)) == reference[1]


@pytest.mark.parametrize(
    "settings",
    [{"temperature": float("nan")}, {"top_p": 0.0}, {"top_k": 0}, {"seed": 2**64}],
    ids=repr,
)
def test_bad_sampling_is_refused_when_generate_is_called(runner, settings):
    with pytest.raises(GptossError):
        runner.generate(PROMPTS[0], max_new_tokens=4, **settings)  # not even iterated


def test_too_many_new_tokens_are_refused_with_the_numbers(runner):
    with pytest.raises(GptossError, match=r"prompt \(4 tokens\) \+ 61 new tokens exceed .* 64"):
        runner.generate(PROMPTS[0], max_new_tokens=61)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_nan_logits_are_an_error_not_tokens(checkpoint, temperature):
    broken = gptoss_lite.load(checkpoint("g1"), device="cpu", dtype=torch.float32, context=64)
    broken.model.mlp[1].norm.data[3] = float("nan")
    with pytest.raises(GptossError, match="logits are NaN or infinite"):
        next(broken.generate(PROMPTS[0], max_new_tokens=4, temperature=temperature))


def test_cli_reports_nan_logits_as_an_error(cli, tiny_model, monkeypatch):
    from gptoss_lite.model import transformer

    forward = transformer.Transformer.forward
    monkeypatch.setattr(
        transformer.Transformer, "forward", lambda *a, **k: forward(*a, **k) * float("nan")
    )
    result = cli("run", "-m", tiny_model, "-c", "512", "-n", "4", "Hi")
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1].startswith("error: the model's logits are NaN")
    assert result.stdout == ""


def test_progress_is_monotone_and_complete(checkpoint):
    loaded = []
    runner = gptoss_lite.load(
        checkpoint("g1"), device="cpu", context=64, progress=lambda d, t: loaded.append((d, t))
    )
    total = sum(p.numel() * p.element_size() for p in runner.model.parameters())
    done = [d for d, _ in loaded]
    assert done == sorted(done) and done[-1] == total and {t for _, t in loaded} == {total}
    prefilled = []
    runner.prefill_chunk, runner.progress = 8, lambda d, t: prefilled.append((d, t))
    runner.logits(list(range(1, 21)))
    assert prefilled == [(8, 20), (16, 20), (20, 20)]


def test_progress_shows_only_on_a_terminal(monkeypatch, capsys):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert Progress.on_stderr("prefill", str) is None

    class Terminal:
        def __init__(self):
            self.text = ""

        def write(self, text):
            self.text += text

        def flush(self):
            pass

    screen = Terminal()
    show = Progress("prefill", lambda n: f"{n} tokens", screen)
    show(8, 20)
    assert screen.text.endswith("prefill: 8 tokens of 20 tokens (40%)")
    show(20, 20)
    assert screen.text.endswith("(100%)\r\033[K")  # the finished line is erased


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline; `hub_cache.add(repo_id, folder)` caches a repo."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    class Cache:
        root = tmp_path / "hub"

        def add(self, repo_id: str, folder) -> None:
            repo = self.root / f"models--{repo_id.replace('/', '--')}"
            commit = "0123456789abcdef0123456789abcdef01234567"
            shutil.copytree(folder, repo / "snapshots" / commit)
            (repo / "refs").mkdir()
            (repo / "refs" / "main").write_text(commit)

    return Cache()


def test_offline_without_a_cache_says_what_to_do(hub_cache):
    with pytest.raises(GptossError) as caught:
        find_model("openai/gpt-oss-20b")
    message = str(caught.value)
    assert "HF_HUB_OFFLINE=1 is set" in message
    assert str(hub_cache.root / "models--openai--gpt-oss-20b") in message
    assert "`hf download openai/gpt-oss-20b`" in message and "\n" not in message


def test_a_cached_repo_goes_by_its_repo_id(cli, tiny_model, hub_cache):
    hub_cache.add("someone/tiny-oss", tiny_model)
    source = find_model("someone/tiny-oss")
    assert source.name == source.config.name == "someone/tiny-oss"
    assert source.folder.name != "someone/tiny-oss"  # the snapshot folder is a commit hash
    result = cli("run", "-m", "someone/tiny-oss", "-c", "512", "-n", "2", "--json", "Hi")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("someone/tiny-oss on ")
    assert '"model": "someone/tiny-oss"' in result.stdout


def test_an_unknown_kernel_name_is_one_line(checkpoint):
    with pytest.raises(GptossError, match="^unknown kernels 'cuda-fast'; use auto, torch or"):
        gptoss_lite.load(checkpoint("g1"), device="cpu", context=64, kernels="cuda-fast")
