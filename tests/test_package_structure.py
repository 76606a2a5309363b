"""The package's shape, read from its source: no import cycle between its modules, no function over 100 lines, and
no model block that switches its code path by inspecting autograd."""

from __future__ import annotations

import ast
from pathlib import Path

import diffusers_videovae

PACKAGE = Path(diffusers_videovae.__file__).parent
MAX_FUNCTION_LINES = 100


def _modules() -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's `__init__`)."""
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return modules


def _runtime_nodes(tree: ast.AST):
    """Every node of `tree` except those under `if TYPE_CHECKING:` (imports for type checkers only)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            test = child.test if isinstance(child, ast.If) else None
            if test is not None and "TYPE_CHECKING" in {getattr(test, "id", None), getattr(test, "attr", None)}:
                stack.extend(child.orelse)
                continue
            stack.append(child)


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports when it runs, at module level or inside a function (a deferred
    import is a cycle put off, not removed); imports under `if TYPE_CHECKING:` never run and do not count.
    `from . import name` imports the submodule `name` when there is one, else the package's `__init__`."""
    modules = _modules()
    graph = {}
    for module, (path, is_package) in modules.items():
        edges = set()
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = module.split(".") if is_package else module.split(".")[:-1]
                if node.level:
                    base = base[: len(base) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    if f"{target}.{alias.name}" in modules:
                        edges.add(f"{target}.{alias.name}")
                    elif target in modules:
                        edges.add(target)
        edges.discard(module)
        graph[module] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative)."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    cycles.append(sorted(group))
    return cycles


def test_no_module_of_the_package_imports_in_a_cycle():
    graph = import_graph()
    assert "diffusers_videovae.checkpoints._common" in graph and graph["diffusers_videovae.models.iv_vae"]
    assert import_cycles(graph) == []


def test_imports_for_type_checkers_only_are_not_edges():
    graph = import_graph()
    # `diffusers_videovae/__init__.py` names its public classes under TYPE_CHECKING and imports them lazily.
    assert "diffusers_videovae.loaders" not in graph["diffusers_videovae"]


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_cycles(graph) == [["a", "b", "c"]]


def test_no_function_of_the_package_is_over_100_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


# Where the models may read `torch.is_grad_enabled()`: the gradient-checkpoint call (diffusers' own rule) and the
# autoencoders' per-call decisions, which they pass down to their blocks as arguments (`in_place`, `stream`).
GRAD_SWITCHES = {
    "models/_layers.py:checkpointed",
    "models/iv_vae.py:AutoencoderKLIVVAE._in_place",
    "models/reducio_vae.py:AutoencoderKLReducio._streams_frames",
}


def _functions_reading_autograd(path: Path) -> set[str]:
    """`file:Class.function` of every function in `path` whose body calls `torch.is_grad_enabled()`."""
    found = set()

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                calls = (n for n in ast.walk(child) if isinstance(n, ast.Call))
                if any(getattr(call.func, "attr", None) == "is_grad_enabled" for call in calls):
                    found.add(f"{path.relative_to(PACKAGE).as_posix()}:{prefix}{child.name}")

    visit(ast.parse(path.read_text(encoding="utf-8")), "")
    return found


def test_only_the_autoencoders_decide_by_autograd_what_their_blocks_do():
    readers = set()
    for path in sorted((PACKAGE / "models").glob("*.py")):
        readers |= _functions_reading_autograd(path)
    assert readers == GRAD_SWITCHES
