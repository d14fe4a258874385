r"""Auto-graded assignments: the layer's maths as notebooks a student completes, graded by nbgrader.

Four assignments, each one notebook (``sources/<name>.py``, jupytext ``py:percent``, with
nbgrader's cell metadata in the cell headers):

* ``micro_layer`` (10 points): the micro-layer's forward and backward (Eqs. 6-9);
* ``bptt`` (10): BPTT over a window: one step, the time loop, the weight gradients, the
  gradient from the next window (``ds_last``);
* ``jacobian`` (8, and 2 graded by hand): a micro-layer's Jacobian (Eqs. 10-13), the step
  Jacobian, Geršgorin discs (Eq. 4); a written answer on Eq. 15's limits;
* ``dtrnn_backward`` (10): the DT-RNN / DT(S)-RNN backward: micro-layer, step, shortcut,
  window.

Each part is its own graded test cell: visible tests first, then hidden tests (nbgrader's
``### BEGIN HIDDEN TESTS``) that compare the student's functions with the reference
(:mod:`rhn_np.rhn`, :mod:`rhn_np.dtrnn`, :mod:`rhn_np.theory`, always the reference
implementation), by central differences and with Hypothesis properties (few examples,
``derandomize=True``: grading is deterministic). The tests of a later part put a correct
function in place of an earlier part's, so a mistake costs the marks of its own part only.
Part 3's written answer is an nbgrader "manually graded answer": it is not in the automatic
score (``grade`` reports it apart).

Everything goes through nbgrader in a temporary course folder (``source/<name>/<name>.ipynb``,
``release/``, ``submitted/<student>/<name>/``, ``autograded/``, ``gradebook.db``):

* :func:`release` runs ``generate_assignment`` and copies ``release/`` out: solutions
  replaced by ``raise NotImplementedError()``, hidden tests removed;
* :func:`grade` / :func:`grade_many` put notebooks under ``submitted/`` and run
  ``autograde``; the scores come from nbgrader's gradebook;
* :func:`grade_solutions` grades the instructor versions, which must score full marks.

The notebooks run in a Jupyter kernel of *this* Python (``sys.executable``): a kernel spec
named ``python3`` written into the course folder and put first on ``JUPYTER_PATH``, with
``OPENBLAS_NUM_THREADS=1`` (and OMP, MKL) and a fresh ``IPYTHONDIR``. nbgrader, jupytext
and ipykernel are the ``assignments`` extra: ``pip install 'rhn-np[assignments]'``; this
module imports them only when a function needs them.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

__all__ = [
    "ASSIGNMENTS",
    "SOURCES",
    "INSTALL_HINT",
    "source_path",
    "notebook_from_source",
    "source_notebook",
    "read_notebook",
    "identify",
    "parts",
    "write_sources",
    "release",
    "grade",
    "grade_many",
    "grade_solutions",
    "full_marks",
    "report",
]

SOURCES = Path(__file__).resolve().parent / "sources"
INSTALL_HINT = "pip install 'rhn-np[assignments]'"
DEFAULT_TIMEOUT = 120  # seconds per notebook cell (a test cell takes about one)

#: name -> (title, what it covers); in the order a course takes them.
ASSIGNMENTS = {
    "micro_layer": ("The RHN micro-layer, forward and backward", "Eqs. 6-9"),
    "bptt": ("Backpropagation through time over a window, with the carried state and ds_last", "Eqs. 6-9, BPTT"),
    "jacobian": ("The step Jacobian and its Geršgorin discs; Eq. 15's limits (written)", "Eqs. 4, 10-13, 15"),
    "dtrnn_backward": ("The DT-RNN / DT(S)-RNN cell's backward", "(DT-1), (DT-2); Eq. 2 at depth 1"),
}

_KERNEL_ENV = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
               "PYDEVD_DISABLE_FILE_VALIDATION": "1"}
_JUPYTEXT_CELL_KEYS = ("lines_to_next_cell", "lines_to_end_of_cell_marker", "cell_marker", "title")


# ----------------------------------------------------------------------------
# The sources
# ----------------------------------------------------------------------------
def _check_names(names):
    if names is None:
        return list(ASSIGNMENTS)
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in ASSIGNMENTS]
    if unknown:
        raise ValueError(f"no assignment named {', '.join(map(repr, unknown))}: the assignments are "
                         f"{', '.join(ASSIGNMENTS)}")
    return names


def _require(*modules):
    """Import the assignments extra's modules, or say how to install them."""
    import importlib

    loaded = []
    for name in modules:
        try:
            loaded.append(importlib.import_module(name))
        except ImportError as exc:
            raise RuntimeError(f"the assignments need {name.split('.')[0]} ({exc}); install them with "
                               f"{INSTALL_HINT}") from None
    return loaded[0] if len(loaded) == 1 else loaded


def _require_in_kernel(*modules):
    """Check, without importing them, the modules the grading kernel needs (it runs this Python):
    without them every part would fail with an import error that looks like the student's."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise RuntimeError(f"grading runs the notebooks with {', '.join(missing)}, which this Python lacks; install "
                           f"them with {INSTALL_HINT}")


def source_path(name) -> Path:
    """The jupytext ``py:percent`` source of assignment ``name`` (solutions and hidden tests in it)."""
    return SOURCES / f"{_check_names(name)[0]}.py"


def notebook_from_source(text: str, name: str | None = None):
    """An nbformat notebook (v4.5) from the text of a ``py:percent`` source.

    nbgrader's metadata comes from the cell headers; jupytext's own cell metadata is
    dropped; cell ids are the grade ids (else ``<name>-cell-<k>``), so that a release is
    the same file every time.
    """
    jupytext, nbformat = _require("jupytext", "nbformat")
    nb = jupytext.reads(text, fmt="py:percent")
    nb.metadata.pop("jupytext", None)
    name = name or nb.metadata.get("rhn_np", {}).get("assignment", "rhn_np")
    nb.nbformat, nb.nbformat_minor = 4, max(5, nb.get("nbformat_minor", 0))
    for k, cell in enumerate(nb.cells):
        for key in _JUPYTEXT_CELL_KEYS:
            cell.metadata.pop(key, None)
        cell["id"] = cell.metadata.get("nbgrader", {}).get("grade_id", f"{name}-cell-{k}")
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.validate(nb)
    return nb


def source_notebook(name):
    """The instructor version of assignment ``name``: solutions and hidden tests included."""
    path = source_path(name)
    return notebook_from_source(path.read_text(encoding="utf-8"), path.stem)


def read_notebook(path):
    """A notebook from an ``.ipynb`` file, or from a ``py:percent`` ``.py`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no notebook at {path}")
    if path.suffix == ".py":
        return notebook_from_source(path.read_text(encoding="utf-8"))
    nbformat = _require("nbformat")
    try:
        return nbformat.read(str(path), as_version=4)
    except Exception as exc:  # not JSON, not a notebook: nbformat raises several kinds
        raise ValueError(f"{path} is not a Jupyter notebook ({type(exc).__name__}: {exc})") from None


def identify(nb, where="the notebook") -> str:
    """Which assignment a notebook is: from its ``rhn_np`` metadata, else from its grade ids."""
    name = nb.get("metadata", {}).get("rhn_np", {}).get("assignment")
    if name in ASSIGNMENTS:
        return name
    ids = {c.get("metadata", {}).get("nbgrader", {}).get("grade_id", "") for c in nb.get("cells", [])}
    found = {i.split("-", 1)[0] for i in ids} & set(ASSIGNMENTS)
    if len(found) == 1:
        return found.pop()
    raise ValueError(f"{where} is not one of the rhn_np assignments ({', '.join(ASSIGNMENTS)}): "
                     + ("it has cells of several of them" if found else "it has none of their graded cells")
                     + "; grade the notebook that `rhn-np assignments release` wrote, completed")


def parts(name) -> list[dict]:
    """The graded parts of assignment ``name``, in order: ``{"id", "part", "points", "graded"}``,
    ``graded`` "auto" (a test cell) or "hand" (a written answer)."""
    out = []
    for cell in source_notebook(name).cells:
        meta = cell.metadata.get("nbgrader", {})
        if meta.get("grade"):
            out.append({"id": meta["grade_id"], "part": meta["grade_id"].split("-", 1)[1],
                        "points": float(meta["points"]),
                        "graded": "auto" if cell.cell_type == "code" and not meta.get("solution") else "hand"})
    return out


# ----------------------------------------------------------------------------
# nbgrader in a temporary course folder
# ----------------------------------------------------------------------------
def _package_root() -> Path:
    return Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def _course(root: Path):
    """The environment nbgrader and its kernels run in, for the course folder ``root``.

    A kernel spec ``python3`` of this Python, first on ``JUPYTER_PATH`` (nbclient starts the
    notebook's kernel by the name in its metadata, "python3"); ``alembic`` (which nbgrader's
    gradebook calls as a program) found beside this Python; single-threaded BLAS.
    """
    kernels = root / ".jupyter" / "kernels" / "python3"
    kernels.mkdir(parents=True)
    env = {**_KERNEL_ENV, "IPYTHONDIR": str(root / ".ipython")}
    pkg = _package_root()
    if pkg.name not in ("site-packages", "dist-packages"):  # a checkout: let the kernel import this rhn_np
        env["PYTHONPATH"] = os.pathsep.join([str(pkg), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (ipykernel)", "language": "python", "env": env}
    (kernels / "kernel.json").write_text(json.dumps(spec, indent=1), encoding="utf-8")
    saved = {k: os.environ.get(k) for k in ("JUPYTER_PATH", "PATH")}
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(root / ".jupyter"), *filter(None, [saved["JUPYTER_PATH"]])])
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), saved["PATH"] or ""])
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet(log_path: Path):
    """File descriptor 2 into ``log_path`` (nbgrader's kernels inherit it: their start-up
    warnings go there, not onto the terminal), Python warnings off."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(log_path, "ab") as log, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _run(converter_class, root: Path, timeout, **course):
    """Run one nbgrader converter (GenerateAssignment, Autograde) on the course folder ``root``."""
    traitlets_config, coursedir_module, converters = _require("traitlets.config", "nbgrader.coursedir",
                                                              "nbgrader.converters")
    c = traitlets_config.Config()
    c.CourseDirectory.root = str(root)
    c.Execute.timeout = int(timeout)
    c.Execute.startup_timeout = 120
    coursedir = coursedir_module.CourseDirectory(config=c)
    for key, value in course.items():
        setattr(coursedir, key, value)
    app = getattr(converters, converter_class)(coursedir=coursedir, config=c)
    app.force = True
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
    log, propagate, level = app.log, app.log.propagate, app.log.level
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        with _quiet(root / "kernels.log"):
            app.start()
    except Exception as exc:
        kernels = (root / "kernels.log").read_text(encoding="utf-8", errors="replace")
        tail = "\n".join((buffer.getvalue() + kernels).strip().splitlines()[-25:])
        raise RuntimeError(f"nbgrader {converter_class} failed ({type(exc).__name__}: {exc}); its log ends:\n"
                           f"{tail}") from None
    finally:
        log.removeHandler(handler)
        log.propagate, log.level = propagate, level


def _write_notebook(nb, path: Path):
    nbformat = _require("nbformat")
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def _new_gradebook(root: Path):
    """An empty nbgrader gradebook in ``root``, made here as nbgrader makes it: its tables and
    the schema version. (nbgrader would learn the version by running ``alembic heads`` as a
    program, which imports all of nbgrader again: about 5 s.) Left to nbgrader where
    anything here is not as expected."""
    try:
        import nbgrader
        from alembic.script import ScriptDirectory
        from nbgrader.api import Base
        from sqlalchemy import create_engine, text

        head = ScriptDirectory(str(Path(nbgrader.__file__).parent / "alembic")).get_current_head()
    except Exception:  # another nbgrader layout: nbgrader makes the gradebook itself
        return
    engine = create_engine(f"sqlite:///{root / 'gradebook.db'}")
    try:
        Base.metadata.create_all(bind=engine)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
            conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:v)"), {"v": head})
    finally:
        engine.dispose()


def _generate(root: Path, names):
    """``source/<name>/<name>.ipynb`` and ``nbgrader generate_assignment`` for each name (no notebook is run)."""
    if not (root / "gradebook.db").exists():
        _new_gradebook(root)
    for name in names:
        _write_notebook(source_notebook(name), root / "source" / name / f"{name}.ipynb")
        _run("GenerateAssignment", root, DEFAULT_TIMEOUT, assignment_id=name)


def _outputs(out, names, force, what):
    out = Path(out)
    targets = {name: out / name / f"{name}.ipynb" for name in names}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not force:
        raise ValueError(f"{', '.join(existing)} exist already: not overwriting {what} (--force to replace them)")
    return targets


def write_sources(out, names=None, *, force=False) -> list[Path]:
    """Write the instructor versions (solutions, hidden tests, nbgrader metadata) as
    ``out/<name>/<name>.ipynb``: the ``source/`` folder of an nbgrader course."""
    targets = _outputs(out, _check_names(names), force, "them")
    for name, path in targets.items():
        _write_notebook(source_notebook(name), path)
    return list(targets.values())


def release(out, names=None, *, force=False) -> list[Path]:
    """Write the student notebooks, ``out/<name>/<name>.ipynb``, through ``nbgrader generate_assignment``.

    Solutions are replaced by ``# YOUR CODE HERE / raise NotImplementedError()`` (written
    answers by "YOUR ANSWER HERE"), hidden tests removed, visible tests kept. Existing
    notebooks in ``out`` (students' work, perhaps) are refused unless ``force``.
    """
    names = _check_names(names)
    _require("nbgrader.converters", "jupytext")
    targets = _outputs(out, names, force, "a student's work")
    with tempfile.TemporaryDirectory(prefix="rhn-np-course-") as tmp:
        root = Path(tmp).resolve()
        with _course(root):
            _generate(root, names)
        for name, path in targets.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / "release" / name / f"{name}.ipynb", path)
    return list(targets.values())


# ----------------------------------------------------------------------------
# Grading
# ----------------------------------------------------------------------------
def _short(text, width=110):
    return text if len(text) <= width else text[: width - 3] + "..."


def _first_error(cell) -> str:
    """Why a test cell scored 0: its first error (or stderr) output, on one line."""
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            evalue = str(out.get("evalue", "")).strip().splitlines()
            return _short(f"{out.get('ename', 'Error')}: {evalue[0] if evalue else ''}".rstrip(": "))
        if out.get("output_type") == "stream" and out.get("name") == "stderr":
            text = str(out.get("text", "")).strip().splitlines()
            return _short(f"wrote to stderr: {text[0] if text else ''}")
    return ""


def grade_many(notebooks, *, timeout=DEFAULT_TIMEOUT) -> list[dict]:
    """Autograde completed notebooks (``.ipynb``, or ``py:percent`` ``.py``) in one nbgrader course.

    Each notebook becomes the submission of its own student (``student-1``, ...) for the
    assignment it is (:func:`identify`). Returns one result per notebook, in order::

        {"notebook": path, "assignment": name,
         "parts": [{"id", "part", "points", "graded": "auto" | "hand", "score", "message"}, ...],
         "score": auto-graded points scored, "max_score": auto-graded points,
         "hand_points": points of the written answers (graded by hand, not in "score")}

    A written answer's ``score`` is None: nbgrader leaves it to the grader.
    """
    gradebook_api, nbformat = _require("nbgrader.api", "nbformat")
    _require_in_kernel("ipykernel", "hypothesis")
    paths = [Path(p) for p in notebooks]
    submissions = []
    for k, path in enumerate(paths, start=1):
        nb = read_notebook(path)
        submissions.append((path, identify(nb, str(path)), f"student-{k}", nb))
    names = [n for n in ASSIGNMENTS if any(s[1] == n for s in submissions)]
    results = []
    with tempfile.TemporaryDirectory(prefix="rhn-np-course-") as tmp:
        root = Path(tmp).resolve()
        with _course(root):
            _generate(root, names)
            for path, name, student, nb in submissions:
                _write_notebook(nb, root / "submitted" / student / name / f"{name}.ipynb")
            for name in names:
                _run("Autograde", root, timeout, assignment_id=name, student_id="*")
        with gradebook_api.Gradebook(f"sqlite:///{root / 'gradebook.db'}") as gb:
            for path, name, student, _ in submissions:
                graded = nbformat.read(str(root / "autograded" / student / name / f"{name}.ipynb"), as_version=4)
                cells = {c.metadata.get("nbgrader", {}).get("grade_id"): c for c in graded.cells}
                scores = {g.name: g for g in gb.find_submission_notebook(name, name, student).grades}
                rows = []
                for part in parts(name):
                    g = scores.get(part["id"])
                    score = None if part["graded"] == "hand" else float(getattr(g, "auto_score", None) or 0.0)
                    message = ""
                    if score == 0.0:
                        message = _first_error(cells[part["id"]]) if part["id"] in cells else \
                            "its test cell is not in the notebook (deleted?)"
                    rows.append({**part, "score": score, "message": message})
                auto = [r for r in rows if r["graded"] == "auto"]
                results.append({"notebook": str(path), "assignment": name, "parts": rows,
                                "score": sum(r["score"] for r in auto), "max_score": sum(r["points"] for r in auto),
                                "hand_points": sum(r["points"] for r in rows if r["graded"] == "hand")})
    return results


def grade(notebook, *, timeout=DEFAULT_TIMEOUT) -> dict:
    """Autograde one completed notebook: the result of :func:`grade_many` for it."""
    return grade_many([notebook], timeout=timeout)[0]


def grade_solutions(*, timeout=DEFAULT_TIMEOUT) -> dict[str, dict]:
    """Grade the instructor version of every assignment: name -> result (they should score full marks)."""
    with tempfile.TemporaryDirectory(prefix="rhn-np-solutions-") as tmp:
        paths = write_sources(tmp)
        return {r["assignment"]: r for r in grade_many(paths, timeout=timeout)}


def full_marks(result: dict) -> bool:
    """Whether a result has every auto-graded point."""
    return result["score"] == result["max_score"]


def _points(x) -> str:
    return f"{x:g}"


def report(result: dict) -> str:
    """A result as the table ``rhn-np assignments grade`` prints; its last line is ``score X / Y``."""
    title, covers = ASSIGNMENTS[result["assignment"]]
    lines = [f"{result['notebook']}: assignment {result['assignment']} ({title}; {covers})",
             f"{'part':<20} {'points':>6} {'score':>7}"]
    for r in result["parts"]:
        score = "by hand" if r["graded"] == "hand" else _points(r["score"])
        why = f"   {r['message']}" if r["message"] else ""
        lines.append(f"{r['part']:<20} {_points(r['points']):>6} {score:>7}{why}")
    if result["hand_points"]:
        lines.append(f"the written answer ({_points(result['hand_points'])} points) is graded by hand "
                     "(nbgrader formgrader) and is not in this score")
    lines.append(f"score {_points(result['score'])} / {_points(result['max_score'])}")
    return "\n".join(lines)
