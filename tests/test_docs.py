"""The README's map from equations to code must point at lines that hold them, and its
module list must match the package."""

import ast
import importlib.util
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
HINT = "run python docs/sync_equation_links.py"


def _readme():
    return (ROOT / "README.md").read_text(encoding="utf-8")


def _table_rows():
    """The rows of the equation table: RHN rows ("| Eq", "| BPTT of Eqs") and DT-RNN rows."""
    return [line for line in _readme().splitlines() if line.startswith(("| Eq", "| BPTT", "| (DT-"))]


def _links(row):
    return re.findall(r"\]\((rhn_np/[\w./]+)#L(\d+)\)", row)


def _line(path, line):
    return (ROOT / path).read_text(encoding="utf-8").splitlines()[int(line) - 1]


def _numbers(pattern, text):
    """Equation numbers named in ``text``: single ones and ranges "a–b" of ``pattern``."""
    numbers = set()
    for lo, hi in re.findall(pattern, text):
        numbers.update(range(int(lo), int(hi or lo) + 1))
    return numbers


def test_equation_links_point_at_their_equations():
    rows = [row for row in _table_rows() if "(DT-" not in row.split("|")[1]]
    assert len(rows) >= 6
    checked = 0
    for row in rows:
        numbers = _numbers(r"Eqs?\. (\d+)(?:–(\d+))?", row.split("|")[1])
        assert numbers, f"the row {row[:40]!r}... names no equation in its first column"
        for path, line in _links(row):
            text = _line(path, line)
            found = {int(n) for n in re.findall(r"Eqs?\. (\d+)", text)}
            found |= {n for lo, hi in re.findall(r"Eqs\. (\d+)-(\d+)", text) for n in range(int(lo), int(hi) + 1)}
            assert found & numbers, (
                f"{path}:{line} should implement Eq. {sorted(numbers)} but reads: {text.strip()!r}; {HINT}"
            )
            checked += 1
    assert checked >= 7


def test_dt_rnn_links_point_at_their_equations():
    """A DT-RNN row's links go into rhn_np/dtrnn.py, to a line carrying its marker "(DT-k)";
    the rows of one equation point at code (the marker in a comment), not at the docstring."""
    rows = [row for row in _table_rows() if "(DT-" in row.split("|")[1]]
    assert len(rows) >= 3, "the table should have the rows (DT-1), (DT-2) and the DT-RNN's BPTT"
    checked, equations = 0, set()
    for row in rows:
        first = row.split("|")[1]
        numbers = _numbers(r"\(DT-(\d+)\)(?:–\(DT-(\d+)\))?", first)
        single = re.fullmatch(r"\s*\(DT-\d+\)\s*", first) is not None
        equations |= numbers if single else set()
        links = _links(row)
        assert links, f"the row {first.strip()!r} has no line link"
        for path, line in links:
            assert path == "rhn_np/dtrnn.py", f"the row {first.strip()!r} links {path}, not rhn_np/dtrnn.py"
            text = _line(path, line)
            found = {int(n) for n in re.findall(r"\(DT-(\d+)\)", text)}
            assert found & numbers, (
                f"{path}:{line} should carry (DT-{sorted(numbers)}) but reads: {text.strip()!r}; {HINT}"
            )
            if single:
                assert re.search(r"#.*\(DT-\d+\)", text), (
                    f"{path}:{line} is not a code line with a (DT-k) comment: {text.strip()!r}; {HINT}")
            checked += 1
    assert equations == {1, 2}
    assert checked >= 4


def test_equation_table_is_in_step_with_the_sync_script():
    """Every link points at the line the script's marker is on (so no row is forgotten)."""
    spec = importlib.util.spec_from_file_location("sync_equation_links", ROOT / "docs" / "sync_equation_links.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    readme = _readme()
    try:
        new = sync.synced(readme)
    except SystemExit as exc:  # a marker is gone or repeated, or a row does not match MARKERS
        pytest.fail(str(exc))
    stale = [old for old, now in zip(readme.split("\n"), new.split("\n")) if old != now]
    assert not stale, f"{HINT}; rows out of step: {stale}"


def _package_imports(path, modules):
    """The package modules that the file ``path`` imports (relative imports only)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = name.removesuffix(".__init__") if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    deps = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for a in node.names:
                sub = f"{target}.{a.name}"
                deps.add(sub if sub in modules else target)
    return {d for d in deps if d in modules and d != name.removesuffix(".__init__")}


def test_readme_layout_lists_every_module_in_import_order():
    """The Layout section names every module of rhn_np, each after the modules it imports."""
    files = sorted((ROOT / "rhn_np").rglob("*.py"))
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in files}
    section = _readme().split("## Layout", 1)[1]
    listed = re.findall(r"^(rhn_np/[\w/]+\.py)\s", section, flags=re.M)
    names = [p.removesuffix(".py").replace("/", ".").removesuffix(".__init__") for p in listed]
    assert set(names) == set(modules) - {"rhn_np"}, (
        f"README's Layout lists {sorted(set(names))}, the package has {sorted(set(modules) - {'rhn_np'})}")
    position = {n: i for i, n in enumerate(names)}
    for mod in names:
        for dep in _package_imports(modules[mod], modules):
            if dep == "rhn_np":
                continue  # the package's __init__ (__version__)
            assert position[dep] < position[mod], f"README's Layout lists {mod} before {dep}, which it imports"
