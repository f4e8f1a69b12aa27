"""Host memory setting: applied on glibc Linux, and a user's own setting wins."""

import sys

import pytest

from gptoss_lite.cli.host import release_freed_memory


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_threshold_is_set_unless_the_user_set_one(monkeypatch):
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert release_freed_memory() is True
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert release_freed_memory() is False
