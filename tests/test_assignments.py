"""The auto-graded assignments (:mod:`rhn_np.assignments`): the release, and grades that can fail.

For every assignment, in one nbgrader course (one ``autograde`` run per assignment, so the
file stays near a minute on two cores):

* the blank notebook, as released, scores 0;
* the instructor version (the solutions) scores full marks;
* a typical mistake, made by replacing one line of the solution source, loses the marks of
  its part and keeps every other part's.

The release itself: solutions and hidden tests are gone, the visible tests and the stubs
are there. Skipped, with the reason, where nbgrader is not installed.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytest.importorskip("nbgrader", reason="nbgrader is not installed: pip install 'rhn-np[assignments]'")
pytest.importorskip("jupytext", reason="jupytext is not installed: pip install 'rhn-np[assignments]'")

import nbformat  # noqa: E402  (after the skips: nbgrader brings it)

from rhn_np import assignments as A  # noqa: E402
from rhn_np import cli  # noqa: E402

# (assignment, mistake, the solution line it starts with, its replacement, the part that must lose its marks)
MISTAKES = [
    ("micro_layer", "sign error in ∂L/∂a_T", "        da_T = ds * (h - s_in) * t * (1.0 - t)",
     "        da_T = ds * (s_in - h) * t * (1.0 - t)", "backward_coupled"),
    ("micro_layer", "no carry term in the forward", "        s = h * t + s_in * c  # Eq. 6", "        s = h * t", "forward"),
    ("bptt", "missing carry term", "        ds = ds_carry + (ds_tr if m_s is None else ds_tr * m_s)",
     "        ds = ds_tr if m_s is None else ds_tr * m_s", "step"),
    ("bptt", "mask on the carry", "        ds = ds_carry + (ds_tr if m_s is None else ds_tr * m_s)",
     "        ds = (ds_carry + ds_tr) if m_s is None else (ds_carry + ds_tr) * m_s", "step"),
    ("bptt", "ds_last ignored", "    ds = np.zeros((B, n)) if ds_last is None else ds_last", "    ds = np.zeros((B, n))",
     "ds_last"),
    ("bptt", "∂L/∂R from the unmasked states", "    S_tr = S if m_s is None else S * m_s", "    S_tr = S", "weights"),
    ("jacobian", "wrong transpose", "    RH, RT = R_H.T[None, :, :], R_T.T[None, :, :]",
     "    RH, RT = R_H[None, :, :], R_T[None, :, :]", "micro"),
    ("jacobian", "micro-layers chained in the wrong order", "        J = J_l @ J", "        J = J @ J_l", "chain"),
    ("jacobian", "column radii for row radii", "    radii = np.abs(M).sum(axis=-1) - np.abs(centres)",
     "    radii = np.abs(M).sum(axis=-2) - np.abs(centres)", "discs"),
    ("dtrnn_backward", "tanh' written as 1 - z", "    return dz * (1.0 - z * z)", "    return dz * (1.0 - z)", "micro"),
    ("dtrnn_backward", "wrong transpose", "        g = das[l] @ R[l].T", "        g = das[l] @ R[l]", "step"),
    ("dtrnn_backward", "shortcut without the state mask", "        g = g + (d_short if m_s is None else d_short * m_s)",
     "        g = g + d_short", "shortcut"),
    ("dtrnn_backward", "∂L/∂U from the unmasked state", "        s_tr = S_prev if m_s is None else S_prev * m_s",
     "        s_tr = S_prev", "window"),
]
MISTAKE_IDS = [f"{name}: {what}" for name, what, *_ in MISTAKES]


def _with_mistake(name, old, new):
    """The solution source of ``name`` with the one solution line that starts with ``old`` replaced by ``new``."""
    lines = A.source_path(name).read_text(encoding="utf-8").split("\n")
    hits, within = [], False
    for k, line in enumerate(lines):
        within = (within or "BEGIN SOLUTION" in line) and "END SOLUTION" not in line
        if within and line.startswith(old):
            hits.append(k)
    assert len(hits) == 1, f"{name}: {len(hits)} solution lines start with {old!r} (the source changed?)"
    lines[hits[0]] = new
    return "\n".join(lines)


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    out = tmp_path_factory.mktemp("release")
    paths = A.release(out)
    return {path.parent.name: path for path in paths}


@pytest.fixture(scope="module")
def graded(released, tmp_path_factory):
    """Blank, solution and mistake notebooks of every assignment, graded in one course."""
    folder = tmp_path_factory.mktemp("submissions")
    solutions = {p.parent.name: p for p in A.write_sources(folder / "solutions")}
    mistakes = []
    for k, (name, _, old, new, _) in enumerate(MISTAKES):
        path = folder / f"mistake-{k}" / f"{name}.ipynb"
        path.parent.mkdir()
        nbformat.write(A.notebook_from_source(_with_mistake(name, old, new), name), str(path))
        mistakes.append(path)
    names = list(A.ASSIGNMENTS)
    results = A.grade_many([released[n] for n in names] + [solutions[n] for n in names] + mistakes)
    blank, solution = results[: len(names)], results[len(names) : 2 * len(names)]
    return {"blank": dict(zip(names, blank)), "solution": dict(zip(names, solution)),
            "mistake": results[2 * len(names) :]}


def _scores(result):
    return {r["part"]: r["score"] for r in result["parts"] if r["graded"] == "auto"}


# ----------------------------------------------------------------------------
# The release
# ----------------------------------------------------------------------------
def _regions(source, begin, end):
    """The lines inside ``begin`` ... ``end`` regions of a source, and the lines outside them."""
    inside, outside, within = set(), set(), False
    for line in source.split("\n"):
        text = line.split("  # ")[0].strip().lstrip("#").strip()  # the code, without a trailing comment
        if begin in line:
            within = True
        elif end in line:
            within = False
        elif len(text) > 24:
            (inside if within else outside).add(text)
    return inside - outside, outside


@pytest.mark.parametrize("name", list(A.ASSIGNMENTS))
def test_release_holds_back_solutions_and_hidden_tests(released, name):
    text = released[name].read_text(encoding="utf-8")
    nb = nbformat.read(str(released[name]), as_version=4)
    source = A.source_path(name).read_text(encoding="utf-8")
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text, f"{name}: {marker!r} in the released notebook"
    released_text = "\n".join(c.source for c in nb.cells)
    for begin, end in (("BEGIN SOLUTION", "END SOLUTION"), ("BEGIN HIDDEN TESTS", "END HIDDEN TESTS")):
        secret, _ = _regions(source, begin, end)
        assert secret, f"{name}: no {begin} region found in the source"
        leaked = sorted(line for line in secret if line in released_text)
        assert not leaked, f"{name}: lines of {begin} regions released: {leaked[:3]}"
    code_regions = len(re.findall(r"^\s*### BEGIN SOLUTION", source, flags=re.M))  # not "# ### ...": markdown
    assert released_text.count("raise NotImplementedError()") == code_regions
    graded_ids = [p["id"] for p in A.parts(name)]
    cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in nb.cells}
    for part in A.parts(name):
        cell = cells[part["id"]]
        assert cell.metadata.nbgrader["points"] == part["points"]
        if part["graded"] == "auto":
            assert "visible tests passed" in cell.source and "assert" in cell.source, f"{part['id']}: visible tests"
        else:
            assert "YOUR ANSWER HERE" in cell.source
    assert len(graded_ids) >= 3


def test_release_refuses_to_overwrite(released):
    with pytest.raises(ValueError, match="exist already"):
        A.release(released["bptt"].parents[1], ["bptt"])


# ----------------------------------------------------------------------------
# Grades that can fail
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(A.ASSIGNMENTS))
def test_the_blank_notebook_scores_zero(graded, name):
    res = graded["blank"][name]
    assert res["assignment"] == name and res["max_score"] > 0
    assert res["score"] == 0, _scores(res)
    assert all(r["message"] for r in res["parts"] if r["graded"] == "auto"), "each lost part says why"


@pytest.mark.parametrize("name", list(A.ASSIGNMENTS))
def test_the_solutions_score_full_marks(graded, name):
    res = graded["solution"][name]
    assert A.full_marks(res), A.report(res)
    assert res["max_score"] == sum(p["points"] for p in A.parts(name) if p["graded"] == "auto")


@pytest.mark.parametrize("k", range(len(MISTAKES)), ids=MISTAKE_IDS)
def test_a_mistake_loses_its_part_only(graded, k):
    name, what, _, _, part = MISTAKES[k]
    res = graded["mistake"][k]
    assert res["assignment"] == name
    points = {p["part"]: p["points"] for p in A.parts(name) if p["graded"] == "auto"}
    want = {p: (0.0 if p == part else pts) for p, pts in points.items()}
    assert _scores(res) == want, f"{what}: {A.report(res)}"


def test_the_written_answer_is_graded_by_hand(graded):
    res = graded["solution"]["jacobian"]
    (written,) = [r for r in res["parts"] if r["graded"] == "hand"]
    assert written["part"] == "eq15" and written["score"] is None and res["hand_points"] == written["points"]
    assert res["max_score"] == sum(r["points"] for r in res["parts"]) - written["points"]
    assert "graded by hand" in A.report(res)


# ----------------------------------------------------------------------------
# The command line and the errors
# ----------------------------------------------------------------------------
def test_cli_grade_prints_a_table_and_the_score_last(released, capsys):
    assert cli.main(["assignments", "grade", str(released["micro_layer"])]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "score 0 / 10"
    assert any(line.startswith("backward_coupled") and "NotImplementedError" in line for line in lines)


def test_cli_grade_solutions(graded, monkeypatch, capsys):
    monkeypatch.setattr(A, "grade_solutions", lambda **_: dict(graded["solution"]))
    assert cli.main(["assignments", "grade", "--solutions"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "all solutions score full marks"
    short = {**graded["solution"], "bptt": graded["mistake"][MISTAKE_IDS.index("bptt: ds_last ignored")]}
    monkeypatch.setattr(A, "grade_solutions", lambda **_: short)
    assert cli.main(["assignments", "grade", "--solutions"]) == 1
    out = capsys.readouterr()
    assert "all solutions score full marks" not in out.out and "solutions that lose marks: bptt" in out.err


def test_not_one_of_ours(tmp_path, capsys):
    other = tmp_path / "other.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")]), str(other))
    with pytest.raises(ValueError, match="not one of the rhn_np assignments"):
        A.grade(other)
    (tmp_path / "notes.ipynb").write_text("not json", encoding="utf-8")
    assert cli.main(["assignments", "grade", str(tmp_path / "notes.ipynb")]) == 1
    assert "is not a Jupyter notebook" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError):
        A.grade(tmp_path / "missing.ipynb")
    with pytest.raises(ValueError, match="no assignment named"):
        A.release(tmp_path / "out", ["rnn"])


def test_missing_nbgrader_says_how_to_install(monkeypatch, tmp_path, released):
    with monkeypatch.context() as m:
        m.setitem(sys.modules, "nbgrader.converters", None)  # import nbgrader.converters now fails
        with pytest.raises(RuntimeError, match=re.escape(A.INSTALL_HINT)):
            A.release(tmp_path)
    with monkeypatch.context() as m:  # the kernel would fail on every hidden test: said before grading
        m.setitem(sys.modules, "hypothesis", None)
        with pytest.raises(RuntimeError, match="hypothesis.*" + re.escape(A.INSTALL_HINT)):
            A.grade(released["micro_layer"])


def test_the_package_does_not_import_nbgrader():
    code = "import sys, rhn_np, rhn_np.assignments, rhn_np.cli; assert 'nbgrader' not in sys.modules, 'nbgrader imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
