"""`.ci/skips.py` fails CI on a module skipped at collection or on a skip reason it does not
expect, and passes the expected ones: run on the JUnit report of a real pytest run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

CHECK = Path(__file__).resolve().parent.parent / ".ci" / "skips.py"

EXPECTED_ONLY = """
import pytest

@pytest.mark.skipif(True, reason="needs a CUDA device")
def test_gpu():
    pass

def test_tmpfs():
    pytest.skip("cannot mount a tmpfs here (no unprivileged user namespaces)")

def test_runs():
    pass
"""
MODULE_SKIP = 'import pytest\npytest.skip("triton was imported", allow_module_level=True)\n'
OTHER_REASON = 'import pytest\n\ndef test_x():\n    pytest.skip("no compiler")\n'


def check(tmp_path: Path, **modules: str) -> subprocess.CompletedProcess:
    for name, text in modules.items():
        (tmp_path / f"{name}.py").write_text(text)
    report = tmp_path / "report.xml"
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    subprocess.run([*run, str(tmp_path)], capture_output=True, cwd=tmp_path, check=True)
    return subprocess.run([sys.executable, str(CHECK), str(report)], capture_output=True, text=True)


def test_expected_skips_pass_and_are_printed(tmp_path):
    out = check(tmp_path, test_a=EXPECTED_ONLY)
    assert out.returncode == 0, out.stdout
    assert "skip (test, expected) x1: needs a CUDA device" in out.stdout
    assert "no unprivileged user namespaces" in out.stdout


@pytest.mark.parametrize(
    ("module", "shown"),
    [(MODULE_SKIP, "skip (collection, UNEXPECTED)"), (OTHER_REASON, "UNEXPECTED) x1: no compiler")],
)
def test_an_unexpected_skip_fails(tmp_path, module, shown):
    out = check(tmp_path, test_a=EXPECTED_ONLY, test_b=module)
    assert out.returncode == 1
    assert shown in out.stdout and "needs a CUDA device" in out.stdout
