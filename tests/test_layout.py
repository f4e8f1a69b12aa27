"""The layout's import rules, read from the source with `ast` (imports inside functions count;
those under `if TYPE_CHECKING:` do not, as they never run).

- `gptoss_lite/model/` imports nothing of the project but `config` and `errors`;
- `gptoss_lite/engine/` imports only `model/`, `kernels/`, the reading side of `checkpoint/`,
  `memory/plan` and `memory/profiles` (the budget a plan is made for), `config` and `errors`;
- nothing `model/` or `engine/` imports, directly or through other modules, is `quantize/`, the
  synthetic writer, the memory report or `chat/`;
- nothing under `gptoss_lite/` imports `quantize/` but the two commands that expose it;
- and, run for real, importing the package and the loader leaves those tools unimported.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gptoss_lite", "quantize")

MODEL_MAY_IMPORT = ("gptoss_lite.config", "gptoss_lite.errors")
ENGINE_MAY_IMPORT = (
    "gptoss_lite.model",
    "gptoss_lite.kernels",
    "gptoss_lite.checkpoint",
    "gptoss_lite.memory.plan",
    "gptoss_lite.memory.profiles",
    "gptoss_lite.config",
    "gptoss_lite.errors",
)
WRITERS = ("gptoss_lite.checkpoint.synthetic", "gptoss_lite.checkpoint.synthetic_memory")
NEVER_BELOW_ENGINE = ("quantize", *WRITERS, "gptoss_lite.memory.vram_report", "gptoss_lite.chat")
QUANTIZE_USERS = ("gptoss_lite.cli.quantize", "gptoss_lite.cli.quant_error")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported(path: Path) -> set[str]:
    """The project modules `path` imports, as absolute dotted names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in GRAPH_NODES}


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


FILES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
GRAPH_NODES = set(FILES)
GRAPH = {name: imported(path) - {name} for name, path in FILES.items()}


def reachable(module: str) -> set[str]:
    """Every project module that importing `module` imports, through any chain."""
    seen, todo = set(), [module]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


RULES = (*MODEL_MAY_IMPORT, *ENGINE_MAY_IMPORT, *NEVER_BELOW_ENGINE, *QUANTIZE_USERS)


@pytest.mark.parametrize("name", RULES)
def test_every_rule_names_modules_that_exist(name):
    # A rule about a module that does not exist can never fail.
    assert any(within(m, (name,)) for m in FILES), f"no module {name}"


def test_the_graph_sees_the_imports():
    # The parser must find real imports, or every rule below would pass vacuously.
    assert "gptoss_lite.model.cache" in GRAPH["gptoss_lite.engine.generate"]
    assert "gptoss_lite.errors" in GRAPH["gptoss_lite.model.cache"]
    assert "quantize.report" in GRAPH["gptoss_lite.cli.quant_error"]


@pytest.mark.parametrize("module", [m for m in FILES if within(m, ("gptoss_lite.model",))])
def test_model_imports_only_config_and_errors(module):
    outside = {m for m in GRAPH[module] if not within(m, ("gptoss_lite.model", *MODEL_MAY_IMPORT))}
    assert not outside, f"{module} imports {sorted(outside)}"


@pytest.mark.parametrize("module", [m for m in FILES if within(m, ("gptoss_lite.engine",))])
def test_engine_imports_only_what_it_builds_on(module):
    allowed = ("gptoss_lite.engine", *ENGINE_MAY_IMPORT)
    outside = {m for m in GRAPH[module] if not within(m, allowed) or within(m, WRITERS)}
    assert not outside, f"{module} imports {sorted(outside)}"


@pytest.mark.parametrize(
    "module", [m for m in FILES if within(m, ("gptoss_lite.model", "gptoss_lite.engine"))]
)
def test_model_and_engine_pull_in_no_tools(module):
    pulled = {m for m in reachable(module) if within(m, NEVER_BELOW_ENGINE)}
    assert not pulled, f"importing {module} imports {sorted(pulled)}"


@pytest.mark.parametrize("module", [m for m in FILES if within(m, ("gptoss_lite",))])
def test_only_two_commands_import_quantize(module):
    if module in QUANTIZE_USERS:
        return
    direct = {m for m in GRAPH[module] if within(m, ("quantize",))}
    assert not direct, f"{module} imports {sorted(direct)}"


def test_loading_a_model_imports_neither_quantize_nor_the_synthetic_writer():
    code = (
        "import sys, gptoss_lite, gptoss_lite.checkpoint.dense;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'quantize'"
        " or m == 'gptoss_lite.checkpoint.synthetic'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
