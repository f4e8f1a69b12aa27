"""All-or-nothing checkpoint writes: a full disk, SIGTERM and SIGKILL leave no partial folder.

`synth` is the writer under test here (quantize shares `outputs.staged`; its own signal and disk
tests are in test_quantize_convert.py). The signal tests run the real command in a subprocess,
slowed down so the signal lands mid-write, and send it a real signal.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from gptoss_lite.checkpoint.safetensors import StreamWriter
from gptoss_lite.checkpoint.synthetic import write_synthetic
from gptoss_lite.cli import main
from gptoss_lite.config import preset
from gptoss_lite.outputs import partial_name, remove_stale

SMALL = preset("tiny").with_(num_layers=1)
# The synth command with every random chunk slowed down, so a signal arrives mid-write.
SLOW_SYNTH = """
import sys, time
import gptoss_lite.checkpoint.synthetic as synthetic
draw = synthetic.draw_chunk
synthetic.draw_chunk = lambda *args: (time.sleep(0.05), draw(*args))[1]
from gptoss_lite.cli import main
main(["synth", sys.argv[1], "--geometry", "tiny", "--layers", "1"])
"""


def start_slow(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_shard(partial: Path, proc: subprocess.Popen) -> None:
    """Until the process has begun writing a shard into `partial`."""
    deadline = time.monotonic() + 60
    while not list(partial.glob("*.safetensors")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the write never started"
        time.sleep(0.02)


def test_sigterm_mid_write_cleans_up_and_exits_143(tmp_path):
    dst = tmp_path / "ckpt"
    proc = start_slow(SLOW_SYNTH, dst)
    wait_for_shard(tmp_path / partial_name(dst, proc.pid), proc)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


def test_the_next_run_removes_what_a_sigkill_left(tmp_path):
    dst = tmp_path / "ckpt"
    proc = start_slow(SLOW_SYNTH, dst)
    left = tmp_path / partial_name(dst, proc.pid)
    wait_for_shard(left, proc)
    proc.kill()
    proc.wait()
    assert left.is_dir()  # SIGKILL cannot be caught
    live = tmp_path / partial_name(dst, os.getppid())  # a live process: another run's, kept
    other = tmp_path / partial_name(tmp_path / "other", proc.pid)  # another DST's, kept
    lookalike = tmp_path / f".{dst.name}.partial-{proc.pid}x"  # not our pattern, kept
    for folder in (live, other, lookalike):
        folder.mkdir()
    write_synthetic(dst, SMALL)
    assert not left.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["ckpt", live.name, other.name, lookalike.name]
    )


def test_a_stale_replacement_is_put_back_when_dst_is_gone(tmp_path):
    dst = tmp_path / "ckpt"
    old = tmp_path / (partial_name(dst, 2**22 + 1) + ".old")  # above Linux's pid_max default
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    assert remove_stale(dst) == []
    assert (dst / "keep.txt").read_text() == "mine"


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    written = []
    real = StreamWriter.append

    def fill_up(self, data):
        if written:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        written.append(len(data))
        return real(self, data)

    monkeypatch.setattr(StreamWriter, "append", fill_up)
    result = CliRunner().invoke(main, ["synth", str(tmp_path / "ckpt"), "--layers", "1"])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (
        f"error: writing {tmp_path / 'ckpt'} failed: No space left on device; nothing was written"
    )
    assert list(tmp_path.iterdir()) == []


def _can_mount_tmpfs(where: Path) -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = f'mount -t tmpfs -o size=1m tmpfs "{where}"'
    return (
        subprocess.run(["unshare", "-rm", "sh", "-c", probe], capture_output=True).returncode == 0
    )


def test_a_real_full_tmpfs(tmp_path):
    """A 1 MiB tmpfs, mounted in a private user and mount namespace, holding a 50 MB write."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("cannot mount a tmpfs here (no unprivileged user namespaces)")
    script = (
        'mount -t tmpfs -o size=1m tmpfs "$1" || exit 99; '
        '"$0" -c "$2" synth "$1/ckpt" --layers 1; echo "status $?"; ls -A "$1"'
    )
    cli = "from gptoss_lite.cli import main; main()"
    out = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, sys.executable, str(disk), cli],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.splitlines() == ["status 1"], out  # and the tmpfs is empty
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: writing {disk / 'ckpt'} failed: No space left on device; nothing was written"
    )
