"""The project's imports run one way: core <- engines <- commands/TUI, with no cycle.

Every import counts, also those inside functions and the command table's
``importlib.import_module`` targets. The layers are the README's Layout table.
"""

import ast
from pathlib import Path

from phiflash.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
# source folder -> installed package name
PACKAGES = {
    "phiflash": "phiflash",
    "phiflash_mlx": "phiflash_mlx",
    "phiflash_gguf": "phiflash_gguf",
    "tui": "phiflash.tui",
    "quantize": "phiflash.quantize",
}
COMMAND_MODULES = {"phiflash.cli", "phiflash.engines"}
COMMAND_PREFIXES = ("phiflash.commands", "phiflash.tui", "phiflash.quantize", "phiflash.serve")
ENGINE_PREFIXES = ("phiflash_mlx", "phiflash_gguf", "phiflash.remote")


def layer(module: str) -> int:
    """0 core, 1 engines, 2 commands and the TUI."""
    if module in COMMAND_MODULES or module.startswith(COMMAND_PREFIXES):
        return 2
    if module.startswith(ENGINE_PREFIXES):
        return 1
    return 0


def project_modules() -> dict[str, Path]:
    mods = {}
    for folder, pkg in PACKAGES.items():
        for f in (ROOT / folder).rglob("*.py"):
            rel = f.relative_to(ROOT / folder).with_suffix("")
            parts = [] if rel.parts == ("__init__",) else list(rel.parts)
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            if "llama_src" in f.parts or "overlay" in f.parts:
                continue
            mods[".".join([pkg, *parts])] = f
    return mods


def imports_of(module: str, path: Path, known: set[str]) -> set[str]:
    is_pkg = path.name == "__init__.py"
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    found = set()

    def add(name: str) -> None:
        while name and name not in known:  # `from pkg import name` may name an attribute
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                prefix = ".".join(base[: len(base) - node.level + 1])
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            for a in node.names:
                add(f"{target}.{a.name}")
    if module == "phiflash.cli":
        for target, _ in COMMANDS.values():
            add(target.partition(":")[0])
    return found


def graph() -> dict[str, set[str]]:
    mods = project_modules()
    known = set(mods)
    # a package's own __init__ runs before any of its modules: not an edge of the design
    inits = {m for m, p in mods.items() if p.name == "__init__.py"}
    return {m: imports_of(m, p, known) - inits for m, p in mods.items()}


def find_cycle(g: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(g):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_the_graph_sees_imports_inside_functions():
    g = graph()
    assert "phiflash_gguf.engine" in g["phiflash.engines"]  # imported inside open_engine
    assert "phiflash.commands.generate" in g["phiflash.cli"]  # the command table


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, " -> ".join(cycle)


def test_imports_never_go_up_a_layer():
    up = [f"{m} -> {t}" for m, targets in graph().items() for t in targets if layer(t) > layer(m)]
    assert not up, "\n".join(up)


def test_find_cycle_reports_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
