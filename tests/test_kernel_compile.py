"""Every kernel launch compiles for real GPUs (sm_80, sm_86, sm_89, sm_90) without spilling.

No GPU is needed: `gptoss_lite.kernels.compile_check` captures the launches of the real wrappers
at the gpt-oss-20b shapes and compiles them with Triton's ptxas. It runs in a subprocess because
the kernels must be real jit functions there, while the kernel tests of this suite switch on the
interpreter, which has to be chosen before Triton is first imported. Triton's cache makes a
rerun take seconds.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")
pytestmark = pytest.mark.slow  # minutes of ptxas with a cold Triton cache


ARCHS = (80, 86, 89, 90)


@pytest.fixture(scope="module")
def compiled() -> dict:
    """The compile check's JSON for every arch, from one subprocess without the interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    command = [sys.executable, "-m", "gptoss_lite.kernels.compile_check", "--json", "--arch"]
    out = subprocess.run(
        [*command, *map(str, ARCHS)], env=env, capture_output=True, text=True, timeout=900
    )
    assert out.returncode in (0, 1), out.stderr  # 1: it compiled, but something spilled
    return json.loads(out.stdout)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles_without_spills(compiled, arch):
    from gptoss_lite.kernels.compile_check import Report, table

    reports = [
        Report(**{**r, "grid": tuple(r["grid"])}) for r in compiled["reports"] if r["arch"] == arch
    ]
    print(table(reports))
    assert sorted({r.kernel for r in reports}) == compiled["kernels"]  # every kernel launched
    spilled = [r for r in reports if r.spill_bytes]
    assert not spilled, table(spilled)
    pipelined = ("_attention_kernel", "_gate_up_grouped_kernel", "_down_grouped_kernel")
    serial = [r for r in reports if r.kernel in pipelined and not r.async_copies]
    assert not serial, table(serial)  # their K/V or weight loads are software-pipelined


def test_older_gpus_get_the_torch_path(monkeypatch, caplog):
    """A pre-Ampere card: "auto" falls back to torch with one line; "triton" is refused."""
    from gptoss_lite.engine import runner
    from gptoss_lite.errors import GptossError

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Tesla T4")
    monkeypatch.setattr(runner, "triton_available", lambda: True)
    cuda = torch.device("cuda")
    with caplog.at_level(logging.WARNING):
        assert runner._kernels("auto", cuda) == "torch"
    (record,) = caplog.records
    assert record.getMessage() == (
        "the Triton kernels need a GPU of compute capability 8.0 (sm_80) or newer; "
        "Tesla T4 is 7.5: running the torch path"
    )
    with pytest.raises(GptossError, match="Tesla T4 is 7.5$"):
        runner._kernels("triton", cuda)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device: (8, 6))
    assert runner._kernels("auto", cuda) == "triton"
