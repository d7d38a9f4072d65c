"""The code's shape, computed from the source: no import circles, imports only go down the layers,
Celery only in the two Celery layers, nothing imports the CLI, and the entry shims stay shims."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "dispatch"

# top to bottom; a module may import from its own layer's package and from layers below it
LAYERS = [
    {"cli", "mcp_server"},
    {"runtime"},
    {"tasks"},
    {"store"},
    {"pipeline"},
    {"context", "quorum", "planning", "agents", "workspace"},
    {"report"},
    {"common"},
    {"models", "errors", "config"},
]
CELERY_LAYERS = {"runtime", "tasks"}
# modules of the bottom layer in the order they may import each other (config <- models)
BOTTOM_ORDER = ["errors", "config", "models"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    found["cli"] = ROOT / "cli.py"
    found["worker"] = ROOT / "worker.py"
    return found


def imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, wherever in the file (function-local imports count too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def internal_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, path in mods.items():
        graph[name] = {m for m in imports(path, name) if m in mods and m != name}
    return graph


def layer_of(module: str) -> tuple[int, str]:
    parts = module.split(".")
    if parts[0] != "dispatch" or len(parts) == 1:
        return (-1, "")
    top = parts[1]
    if top == "testing":
        return (-1, top)
    for index, layer in enumerate(LAYERS):
        if top in layer:
            return (index, top)
    raise AssertionError(f"{module}: not in any layer of ARCHITECTURE.md")


def test_no_import_circle():
    graph = internal_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_every_import_goes_down_the_layers():
    faults = []
    for module, targets in internal_graph().items():
        here, top = layer_of(module)
        if here < 0:
            continue
        for target in targets:
            there, other = layer_of(target)
            if there < 0:
                faults.append(f"{module} imports {target}")
            elif there < here:
                faults.append(f"{module} ({top}) imports {target} ({other}), a layer above it")
            elif there == here and top != other and here != len(LAYERS) - 1:
                faults.append(f"{module} ({top}) imports its sibling {target} ({other})")
            elif there == here == len(LAYERS) - 1 and BOTTOM_ORDER.index(other) > BOTTOM_ORDER.index(top):
                faults.append(f"{module} imports {target}, which is above it in {BOTTOM_ORDER}")
    assert not faults, "\n".join(sorted(faults))


def test_celery_and_kombu_only_in_runtime_and_tasks():
    mods = modules()
    faults = []
    for name, path in mods.items():
        if not name.startswith("dispatch.") or name.split(".")[1] in CELERY_LAYERS:
            continue
        for target in imports(path, name):
            if target.split(".")[0] in ("celery", "kombu"):
                faults.append(f"{name} imports {target}")
    assert not faults, "\n".join(sorted(faults))


def test_nothing_outside_cli_imports_cli():
    faults = [f"{module} imports {target}" for module, targets in internal_graph().items()
              for target in targets
              if (target == "dispatch.cli" or target.startswith("dispatch.cli.") or target == "cli")
              and not (module.startswith("dispatch.cli") or module == "cli")]
    assert not faults, "\n".join(faults)


def test_entry_scripts_are_shims_and_not_installed_as_top_level_modules():
    for name in ("cli.py", "worker.py"):
        code = [line for line in (ROOT / name).read_text().splitlines()
                if line.strip() and not line.lstrip().startswith(("#", '"""'))]
        assert len(code) <= 5, f"{name} is more than a shim: {code}"
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "py-modules" not in pyproject
    assert 'dispatch = "dispatch.cli:main"' in pyproject


def test_the_lua_scripts_ship_with_the_package():
    from dispatch.store.scheduler import script

    for name in ("complete", "prepare", "take_ready"):
        assert "redis.call" in script(name)
    assert 'store/lua/*.lua' in (ROOT / "pyproject.toml").read_text()
