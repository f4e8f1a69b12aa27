"""scripts/gpu_check.sh (GPU readiness, part B) parses, and records its steps as JSON lines.

The script is for a lent GPU; here only its environment step runs (with a step it does not know,
which it reports and skips). Its steps 2 to 4 on the tiny geometry on CPU take minutes, so they
are run by hand (the README gives the command), not in the suite.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check.sh"


def test_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


def test_steps_are_recorded_as_json_lines(tmp_path):
    env = dict(
        os.environ, OUT=str(tmp_path), GPU_CHECK_PYTHON=sys.executable, GPU_CHECK_DEVICE="cpu"
    )
    done = subprocess.run(
        ["bash", str(SCRIPT), "5"], env=env, check=True, capture_output=True, timeout=300, text=True
    )
    assert "unknown step 5 (1, 2, 3 or 4)" in done.stderr
    lines = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == ["environment"]
    environment = lines[0]
    assert environment["rc"] == 0 and not environment["timed_out"]
    assert environment["result"]["torch"] == torch.__version__
    assert "=== environment" in (tmp_path / "log.txt").read_text()
