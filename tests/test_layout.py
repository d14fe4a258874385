"""The package's layout rules, read from its source with ``ast``:

* imports go one way: no module imports one that imports it, not even inside a function;
* no private helper (``_name``) is imported or reached across modules;
* only :mod:`rhn_np.backend` imports CuPy;
* argument checks live in :mod:`rhn_np.checks`: the maths modules raise no errors themselves.
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "rhn_np"


def _modules():
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module, level, name, is_package):
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def _imports(modules):
    """module -> {imported package module: alias names}, and every private name reached."""
    graph, private = {}, []
    for mod, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
        deps, aliases = set(), {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level:
                target = _resolve(mod, node.level, node.module, is_package)
                for a in node.names:
                    sub = f"{target}.{a.name}"
                    if sub in modules:  # from . import lm
                        deps.add(sub)
                        aliases[a.asname or a.name] = sub
                    else:  # from .lm import HEAD_KEYS
                        deps.add(target)
                        if a.name.startswith("_") and not a.name.startswith("__"):
                            private.append(f"{mod} imports {target}.{a.name}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("rhn_np"):
                        deps.add(a.name)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                private.append(f"{mod} reaches {aliases[node.value.id]}.{node.attr}")
        # a package's own submodules are its parts, not a dependency of them
        graph[mod] = {d for d in deps if d != mod and d in modules}
    return graph, private


def test_imports_go_one_way():
    graph, _ = _imports(_modules())
    order, state = [], {}

    def visit(m, path):
        if state.get(m) == "done":
            return
        assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [m])}"
        state[m] = "open"
        for d in sorted(graph[m]):
            if not (d.startswith(m + ".")):  # a package importing its own submodules
                visit(d, path + [m])
        state[m] = "done"
        order.append(m)

    for m in sorted(graph):
        visit(m, [])
    assert order.index("rhn_np.backend") < order.index("rhn_np.checks") < order.index("rhn_np.rhn")
    assert order.index("rhn_np.rhn") < order.index("rhn_np.cells") < order.index("rhn_np.lm") < order.index("rhn_np.train")


def test_no_private_helper_crosses_modules():
    _, private = _imports(_modules())
    assert private == []


def test_only_the_backend_imports_cupy():
    for mod, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        text = path.read_text(encoding="utf-8")
        uses = any(n.split(".")[0] in ("cupy", "cupyx", "cupy_backends") for n in names) or 'import_module("cupy")' in text
        if mod == "rhn_np.backend":
            assert uses
        else:  # the fast path and the graphs reach CuPy through backend.cupy_module() / cupy_blas()
            assert not uses, mod


def test_the_maths_modules_read_maths_first():
    """No ``raise`` in the cells, the language model and the theory: every argument check is
    a call into ``checks``. (Checks of state, not arguments, stay with the state: a captured
    graph's buffers, an optimiser's state dict, files on disk.)"""
    for name in ("rhn.py", "dtrnn.py", "lm.py", "theory.py"):
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        raises = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Raise)]
        assert raises == [], f"rhn_np/{name} raises at lines {raises}: move the check to rhn_np/checks.py"
