"""The layer order of the packages, read from the source with `ast` (every import counts: those
inside functions, which run when called, and those under `if TYPE_CHECKING:` too).

- Every module belongs to one layer of LAYERS and imports only its own package and the layers
  below; packages sharing a layer (`measure/`, `server/`, `quantize/`) import none of each other.
- No module imports itself through a chain of others: the module graph has no cycle.
- `model/` (the math) imports nothing of the project but `config` and `errors`; nothing `model/`
  or `engine/` imports, through any chain, is a synthetic writer (the loading side never writes).
- Only the two commands that expose it import `quantize/`; run for real, importing the package
  and the loader leaves `quantize/` and the synthetic writer unimported.
Each rule names modules that exist, and the checks are shown failing on made-up graphs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gptoss_lite", "quantize")

# Bottom first. A layer's entries are packages or modules (a name covers its submodules);
# entries of one layer are siblings. `gptoss_lite` itself is the package's `__init__`: the
# Python API (`gptoss_lite.load`), above the engine it re-exports.
LAYERS = (
    ("gptoss_lite.errors",),
    ("gptoss_lite.units",),
    ("gptoss_lite.outputs",),
    ("gptoss_lite.config",),
    ("gptoss_lite.model",),
    ("gptoss_lite.kernels",),
    ("gptoss_lite.checkpoint",),
    ("gptoss_lite.memory",),
    ("gptoss_lite.chat",),
    ("gptoss_lite.engine",),
    ("gptoss_lite.measure", "gptoss_lite.server", "quantize", "gptoss_lite"),
    ("gptoss_lite.cli",),
)
MODEL_MAY_IMPORT = ("gptoss_lite.model", "gptoss_lite.config", "gptoss_lite.errors")
WRITERS = ("gptoss_lite.checkpoint.synthetic", "gptoss_lite.checkpoint.synthetic_memory")
QUANTIZE_USERS = ("gptoss_lite.cli.quantize", "gptoss_lite.cli.quant_error")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set[str]:
    """The project modules `path` imports, as absolute dotted names."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
    return {m for m in found if m in FILES} - {name}


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


FILES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}
GRAPH = {name: imported(path) for name, path in FILES.items()}


def covers(entry: str, module: str) -> bool:
    # The package `gptoss_lite` as an entry is its `__init__` alone.
    return module == entry if entry == "gptoss_lite" else within(module, (entry,))


def home(module: str, layers=LAYERS) -> tuple[int, str]:
    """(layer index, entry) of `module`: the longest entry that covers it."""
    found = [(len(e), i, e) for i, layer in enumerate(layers) for e in layer if covers(e, module)]
    assert found, f"{module} belongs to no layer"
    _, index, entry = max(found)
    return index, entry


def upward(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """Each import that is not of the module's own entry nor of a layer below it."""
    bad = []
    for module, targets in sorted(graph.items()):
        level, entry = home(module, layers)
        for target in sorted(targets):
            to_level, to_entry = home(target, layers)
            if to_entry != entry and to_level >= level:
                bad.append(f"{module} imports {target}")
    return bad


def cycle(graph: dict[str, set[str]]) -> list[str]:
    """One chain of imports that leads back to where it began, or [] if there is none."""
    state: dict[str, str] = {}  # "open" while on the current path, then "done"
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return []


def reachable(module: str) -> set[str]:
    """Every project module that importing `module` imports, through any chain."""
    seen, todo = set(), [module]
    while todo:
        for nxt in GRAPH[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize(
    "name", [e for layer in LAYERS for e in layer] + [*MODEL_MAY_IMPORT, *WRITERS, *QUANTIZE_USERS]
)
def test_every_rule_names_modules_that_exist(name):
    # A rule about a module that does not exist can never fail.
    assert any(within(m, (name,)) for m in FILES), f"no module {name}"


def test_the_graph_sees_the_imports():
    # The parser must find real imports, or every rule below would pass vacuously.
    assert "gptoss_lite.model.cache" in GRAPH["gptoss_lite.engine.generate"]
    assert "gptoss_lite.errors" in GRAPH["gptoss_lite.model.cache"]
    assert "quantize.report" in GRAPH["gptoss_lite.cli.quant_error"]
    assert "gptoss_lite.kernels.cpu" in GRAPH["gptoss_lite.kernels"]  # inside a function


def test_the_checks_catch_an_upward_import_and_a_cycle():
    layers = (("a",), ("b", "c"), ("d",))
    assert upward({"a.x": set(), "b.y": {"a.x", "b.z"}, "b.z": set(), "d": {"c"}}, layers) == []
    assert upward({"a.x": {"b.y"}, "b.y": set()}, layers) == ["a.x imports b.y"]
    assert upward({"b": {"c"}, "c": set()}, layers) == ["b imports c"]  # siblings
    assert cycle({"p": {"q"}, "q": {"r"}, "r": set()}) == []
    assert cycle({"p": {"q"}, "q": {"r"}, "r": {"q"}}) == ["q", "r", "q"]


@pytest.mark.parametrize("module", FILES)
def test_every_module_has_a_layer(module):
    home(module)


def test_imports_go_only_down_the_layers():
    assert not upward(GRAPH), "\n".join(upward(GRAPH))


def test_no_import_cycle():
    assert not cycle(GRAPH), " -> ".join(cycle(GRAPH))


@pytest.mark.parametrize("module", [m for m in FILES if within(m, ("gptoss_lite.model",))])
def test_model_imports_only_config_and_errors(module):
    outside = {m for m in GRAPH[module] if not within(m, MODEL_MAY_IMPORT)}
    assert not outside, f"{module} imports {sorted(outside)}"


@pytest.mark.parametrize(
    "module", [m for m in FILES if within(m, ("gptoss_lite.model", "gptoss_lite.engine"))]
)
def test_model_and_engine_pull_in_no_writer(module):
    pulled = {m for m in reachable(module) if within(m, WRITERS)}
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


def test_plan_imports_no_other_command_nor_the_server_transformers_or_quantize():
    # Each command's module is imported when that command runs, and not before.
    code = (
        "import sys; from gptoss_lite.cli import COMMANDS, main\n"
        "main(['plan', '-m', 'gpt-oss-20b', '-p', 'rtx4090'], standalone_mode=False)\n"
        "heavy = {'uvicorn', 'fastapi', 'transformers', 'quantize'}\n"
        "commands = {'gptoss_lite.cli.' + module for module, _ in COMMANDS.values()}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy or m in commands))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "['gptoss_lite.cli.plan']"
