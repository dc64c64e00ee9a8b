"""The package's layering, read from its source: no import circles, lower layers import no
higher ones.

Every ``import``/``from ... import`` of ``symog_jax`` in ``symog_jax/`` counts, at module level
and inside functions alike (a function-local import still ties the two modules together; it only
hides the cycle from Python's import machinery).

Layers (a module's layer is the first name after ``symog_jax.``; the package's ``__init__`` is the
public facade and may import anything):

* files (the atomic-write helper): imports nothing from the package;
* numerics, models, data, quantizers, pruning: import no training, methods, export, plots or
  pipelines;
* transforms: no training, methods or export (nor plots, pipelines);
* export: no training, methods or pipelines (nor plots);
* methods: no training, plots or pipelines;
* training: of the methods only the interface and registry (``symog_jax.methods`` and
  ``symog_jax.methods.base``), and no plots, pipelines or export;
* plots: no training, pipelines, methods or data (it draws data it is given);
* pipelines: anything.
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

PACKAGE = "symog_jax"
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE

LOW = ("numerics", "models", "data", "quantizers", "pruning")
#: The lowest layer: every writer uses it, it uses nothing of the package.
LOWEST = ("files",)
ALL_LAYERS = {"numerics", "models", "data", "quantizers", "pruning", "transforms", "export",
              "methods", "training", "plots", "pipelines"}
FORBIDDEN = {
    **{layer: ALL_LAYERS | set(LOW) for layer in LOWEST},
    **{layer: {"training", "methods", "export", "plots", "pipelines", "transforms"}
       for layer in LOW},
    "transforms": {"training", "methods", "export", "plots", "pipelines"},
    "export": {"training", "methods", "pipelines", "plots", "transforms"},
    "methods": {"training", "plots", "pipelines"},
    "training": {"plots", "pipelines", "export"},
    "plots": {"training", "pipelines", "methods", "data"},
    "pipelines": set(),
}
#: What training may use of the methods: the interface and the registry, nothing method-specific.
TRAINING_MAY_IMPORT = {"symog_jax.methods", "symog_jax.methods.base"}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def all_modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def imported_modules(name: str, path: pathlib.Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """``[(imported module, line, outside functions)]`` for every symog_jax import in ``path``.

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``.
    """
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    in_function = {id(inner) for fn in ast.walk(tree)
                   if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                   for inner in ast.walk(fn)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source
                       for a in node.names]
        else:
            continue
        for target in targets:
            if target == PACKAGE or target.startswith(PACKAGE + "."):
                out.append((target, node.lineno, id(node) not in in_function))
    return out


def import_graph() -> dict[str, set[str]]:
    modules = all_modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        edges = set()
        # The module an import statement names (a package's own __init__ for names it
        # re-exports); parent packages that Python also runs are not counted, or every package
        # whose __init__ re-exports its submodules would be a circle.
        for target, _, _ in imported_modules(name, path, known):
            if target in known and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def broken_rules() -> list[str]:
    modules = all_modules()
    known = set(modules)
    problems = []
    for name, path in modules.items():
        layer = layer_of(name)
        if layer is None:           # the package facade
            continue
        forbidden = FORBIDDEN.get(layer, set())
        for target, line, _ in imported_modules(name, path, known):
            target_layer = layer_of(target)
            if target_layer in forbidden:
                problems.append(f"{name}:{line} imports {target} ({layer} -> {target_layer})")
            elif (layer == "training" and target_layer == "methods"
                  and target not in TRAINING_MAY_IMPORT):
                problems.append(f"{name}:{line} imports {target} (training may use only the "
                                "method interface and registry)")
    return sorted(set(problems))


# -- the checker itself, on hand-made cases --------------------------------------------------------

def test_find_cycles_on_hand_made_graphs():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    two = find_cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}})
    assert sorted(two) == [["a", "b"], ["c", "d"]]


def test_function_local_imports_are_seen(tmp_path, monkeypatch):
    pkg = tmp_path / PACKAGE
    (pkg / "numerics").mkdir(parents=True)
    (pkg / "training").mkdir()
    for p in (pkg, pkg / "numerics", pkg / "training"):
        (p / "__init__.py").write_text("")
    (pkg / "training" / "loop.py").write_text("X = 1\n")
    (pkg / "numerics" / "bad.py").write_text(
        "def f():\n    from symog_jax.training import loop\n    return loop.X\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", pkg)
    assert broken_rules() == [
        "symog_jax.numerics.bad:2 imports symog_jax.training.loop (numerics -> training)"]


# -- the package ------------------------------------------------------------------------------

def test_no_import_circles():
    cycles = find_cycles(import_graph())
    assert cycles == [], "import circles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_layer_rules():
    problems = broken_rules()
    assert problems == [], "broken layer rules:\n" + "\n".join(problems)


def test_every_module_belongs_to_a_named_layer():
    # A new top-level module or package must be given its rules here.
    unknown = sorted({layer_of(m) for m in all_modules()} - set(FORBIDDEN) - {None})
    assert unknown == [], f"modules outside the named layers: {unknown}"


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_every_named_layer_exists(layer):
    # A renamed package would make its rules vacuous.
    assert (ROOT / layer).is_dir() or (ROOT / f"{layer}.py").is_file(), layer


def test_no_function_local_imports_of_the_package():
    # Inside the package a function-local import of another symog_jax module only hides a cycle
    # or a layering problem from Python; heavy optional dependencies (matplotlib, tensorboardX,
    # tensorflow-datasets) may still be imported where they are used.
    modules = all_modules()
    local = [f"{name}:{line} imports {target}"
             for name, path in modules.items()
             for target, line, at_top in imported_modules(name, path, set(modules))
             if not at_top]
    assert local == [], "function-local imports of symog_jax:\n" + "\n".join(sorted(set(local)))
