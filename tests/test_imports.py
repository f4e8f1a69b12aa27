"""Import rules: the runner does not pull in the quantization tools or the synthetic writer."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gptoss_lite"
# The only modules of gptoss_lite allowed to import the top-level quantize package.
QUANTIZE_USERS = {"cli/quantize.py", "cli/quant_error.py"}


def imported_modules(path: Path) -> set[str]:
    """Absolute names of the modules `path` imports (relative imports resolved)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else ()
            out.add(".".join([*base, *([node.module] if node.module else [])]))
    return out


def test_only_the_quantize_commands_import_quantize():
    offenders = {
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if any(m == "quantize" or m.startswith("quantize.") for m in imported_modules(path))
    }
    assert offenders <= QUANTIZE_USERS
    assert offenders  # the scan sees the two that do


def test_loading_a_model_imports_neither_quantize_nor_the_synthetic_writer():
    code = (
        "import sys, gptoss_lite, gptoss_lite.checkpoint.dense;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'quantize'"
        " or m == 'gptoss_lite.checkpoint.synthetic'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
