"""The package's import structure (docs/architecture.md): no import circle among torchdist_fast's
modules, no underscored name imported from another module, runtime modules short, and the
runtime's layers imported downward only. Read from the source with ``ast`` (nothing imported)."""
import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "torchdist_fast"

# The runtime's layers, bottom first: a module imports only from its own layer or below.
LAYERS = [
    {"reference"},
    {"settings", "rng", "cuda_backend", "triton_kernels"},
    {"ops"},
    {"functional", "routing"},
    {"normal_methods"},
    {"independent"},
    {"distribution"},
    {"kl", "tanh_normal"},
    {"patching"},
    {"streams"},  # the documented older path of rng's per-rank seeds: an alias on top
]
# Outside the layers: the tooling (torchdist_fast.tools: benchmark runner, host overhead, step rates,
# cost model, AOT check, GPU check), the examples, and the main job (``python -m torchdist_fast``).
TOOLING = {"tools", "examples", "__main__"}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: pathlib.Path):
    """(imported module, imported names, inside a module-level ``__getattr__``) of every import in
    the file, at module level or inside functions (a deferred import is a dependency too)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    compat = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "__getattr__":
            compat |= {id(n) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], id(node) in compat
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module
            yield module, [a.name for a in node.names], id(node) in compat


def _graph(include_compat: bool) -> dict:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = set()
        for module, names, compat in _imports(name, path):
            if compat and not include_compat or not module.startswith("torchdist_fast"):
                continue
            # ``from . import x`` imports the module x
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] or [module]
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _cycle(graph: dict):
    """One import circle as a list of modules, or None. A package's ``__init__`` importing its own
    submodules is not a circle (Python imports the package first)."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if node.startswith(dep + "."):  # a submodule importing its package's names
                continue
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, stack)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [])
            if found:
                return found
    return None


def test_no_import_circle():
    assert _cycle(_graph(include_compat=False)) is None


def test_the_cycle_check_finds_a_circle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_underscored_name_imported_from_another_module():
    found = []
    for name, path in _modules().items():
        for module, names, _ in _imports(name, path):
            if module.startswith("torchdist_fast"):
                # a package's private submodule (examples/_common.py) is the package's own business
                found += [f"{name}: from {module} import {n}" for n in names
                          if n.startswith("_") and f"{module}.{n}" not in _modules()]
    assert not found, found


def _layer(name: str):
    top = name.split(".")[1] if name.count(".") else None
    for i, layer in enumerate(LAYERS):
        if top in layer:
            return i
    return None


def test_runtime_imports_run_down_the_layers():
    """class -> op family -> launcher -> kernel; references import nothing above them; patch() on
    top. Compatibility aliases (a module ``__getattr__`` serving an older documented path) count."""
    up = []
    for name, deps in _graph(include_compat=False).items():
        here = _layer(name)
        if here is None:
            continue
        for dep in deps:
            there = _layer(dep)
            if there is not None and there > here:
                up.append(f"{name} -> {dep}")
    assert not up, up


def test_every_module_is_placed():
    tops = {n.split(".")[1] for n in _modules() if n.count(".")}
    assert tops <= set().union(*LAYERS) | TOOLING, tops - set().union(*LAYERS) - TOOLING


@pytest.mark.parametrize("name", sorted(n for n in _modules() if _layer(n) is not None))
def test_runtime_modules_are_short(name):
    lines = len(_modules()[name].read_text().splitlines())
    assert lines <= 450, f"{name}: {lines} lines"


def test_references_import_nothing_above_them():
    deps = _graph(include_compat=True)["torchdist_fast.reference"]
    assert deps == set(), deps


def test_older_documented_paths_still_work():
    """README paths from before the modules moved: torchdist_fast.streams (now rng), and
    torchdist_fast.distribution.patch / is_patched (now patching)."""
    import torchdist_fast
    from torchdist_fast import patching, rng, streams

    assert streams.rank_seed is rng.rank_seed and streams.rank_generator is rng.rank_generator
    assert torchdist_fast.distribution.is_patched is patching.is_patched
    assert torchdist_fast.distribution.patch is patching.patch is torchdist_fast.patch
    assert torchdist_fast.ops.kernels_in_cpu_graphs is torchdist_fast.ops.inductor.kernels_in_cpu_graphs


def test_runtime_imports_no_tooling():
    """The runtime (every layered module) never imports the tooling, the examples or the main job:
    ``pip install`` users get a runtime that does not drag in the benchmark runner or the GPU check."""
    tooling = tuple(f"torchdist_fast.{t}" for t in TOOLING)
    found = [f"{name} -> {dep}" for name, deps in _graph(include_compat=True).items() if _layer(name) is not None
             for dep in deps if dep in tooling or dep.startswith(tuple(t + "." for t in tooling))]
    assert not found, found


def test_the_tooling_check_sees_a_tooling_import(monkeypatch):
    graph = {"torchdist_fast.rng": {"torchdist_fast.tools.bench"}}
    monkeypatch.setitem(globals(), "_graph", lambda include_compat: graph)
    with pytest.raises(AssertionError, match="rng -> torchdist_fast.tools.bench"):
        test_runtime_imports_no_tooling()
