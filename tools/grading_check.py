"""Prove the nbgrader course grades right, fast and safely, running TEACHING.md's commands as written.

Builds the course of tools/make_student.py --nbgrader in build/grading-check/ (beside build/teacher-site/,
so TEACHING.md's relative paths hold), then:
- checks the collect patterns of tools/nbgrader_config.py with nbgrader's own FileNameCollectorPlugin on
  absolute paths (a course path with underscores, Canvas and Moodle names, `_late`, a `-1` resubmission);
- runs every command block of TEACHING.md marked `<!-- grading_check: NAME -->` exactly as written, in
  order: release (generate_assignment, release_assignment to an exchange in a temporary folder), collect
  (zip_collect of a Canvas-style zip of the submissions below), grade (autograde), feedback (generate_feedback
  and the per-student zips), export; the exchange's collect is checked with one submission that carries a
  stray faceage_reference.py (it must not be collected);
- grades six submissions: the solutions (every point), the blank classroom edition (none), one with a missing
  ReLU mask and a wrong mse_loss (only those points lost), one that cheats (stored answers, a disabled check, a
  wrapper around the teacher's reference, a doctored faceage_helpers.py and check_answers.npz: no point for
  those exercises), and one with a `while True` cell (graded within the per-cell timeout, every point);
- checks the feedback holds no hidden test and no path of the grading machine.
It ends with exactly one line:

    nbgrader autograde: solutions S/T points, blank exercises B/T points, N s per submission

T counts the autograded points (the check cells; written answers are graded by hand), N is the time
nbgrader took to autograde the solutions alone. Exits non-zero on any failure. Needs nbgrader (`make
grading-check` installs it into build/teacher-site) and data.zip (FACEAGE_DATA), as the notebooks do.

Usage: python tools/grading_check.py [NOTEBOOKS_DIR]     (run by `make grading-check`)
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_student as ms  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COURSE = ROOT / "build" / "grading-check"  # beside build/teacher-site and build/nbgrader, as TEACHING.md assumes
MARK = re.compile(r"<!-- grading_check: (\w+) -->\s*```bash\n(.*?)```", re.DOTALL)
LOOP_SECONDS_MARGIN = 60  # a submission with a runaway cell may take the per-cell timeout plus this much longer


def fail(message):
    sys.exit(f"grading_check: {message}")


def teaching_blocks() -> dict:
    """{name: bash source} of TEACHING.md's command blocks marked for this check."""
    blocks = dict(MARK.findall((ROOT / "TEACHING.md").read_text(encoding="utf-8")))
    for name in ("setup", "release", "collect", "grade", "feedback", "export"):
        if name not in blocks:
            fail(f"TEACHING.md has no command block marked `<!-- grading_check: {name} -->`.")
    return blocks


def run_block(blocks, name, env):
    """Run one TEACHING.md block as written (after the setup block) in the course folder; return its output."""
    script = f"set -euo pipefail\n{blocks['setup']}\n{blocks[name]}"
    result = subprocess.run(["bash", "-c", script], cwd=COURSE, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        fail(f"TEACHING.md's {name} commands failed:\n{blocks[name]}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


def nbgrader(*args, cwd=COURSE, env=None):
    """Run one nbgrader command (the check's own steps, not TEACHING.md's); stop with its output if it fails."""
    scripts = Path(importlib.util.find_spec("nbgrader").origin).parents[1] / "bin"  # nbgrader runs alembic
    env = dict(env or os.environ, PATH=f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=cwd, capture_output=True, text=True,
                            env=env)
    if result.returncode != 0:
        fail(f"nbgrader {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout + result.stderr


# --- the collect patterns, against nbgrader's own matching ----------------------------------------------

COLLECT_CASES = {  # (LMS, path inside the course's extracted folder) -> (student_id, file_id)
    ("canvas", "doejane_12345_67890_02_backprop_and_gradient_checking.ipynb"):
        ("12345", "02_backprop_and_gradient_checking"),
    ("canvas", "doejane_late_12345_67891_03_training_with_sgd.ipynb"): ("12345", "03_training_with_sgd"),
    ("canvas", "doejane_LATE_12345_67892_04_browse_the_learned_weights.ipynb"):
        ("12345", "04_browse_the_learned_weights"),
    ("canvas", "smithbob_222_333_02_backprop_and_gradient_checking-1.ipynb"):
        ("222", "02_backprop_and_gradient_checking"),
    ("canvas", "sub_folder/smithbob_222_333_05_make_it_better-12.ipynb"): ("222", "05_make_it_better"),
    ("moodle", "Jane Doe_1234567_assignsubmission_file_02_backprop_and_gradient_checking.ipynb"):
        ("1234567", "02_backprop_and_gradient_checking"),
    ("moodle", "Jean-Luc O'Brien_7654321_assignsubmission_file/06_which_pixels_matter.ipynb"):
        ("7654321", "06_which_pixels_matter"),
    ("moodle", "Ana_Maria Silva_55_assignsubmission_file_07_any_depth-1.ipynb"): ("55", "07_any_depth"),
}
NOT_COLLECTED = {("canvas", "doejane_12345_67890_notes.txt"), ("canvas", "doejane_12345_67890_README.ipynb"),
                 ("moodle", "Jane Doe_1234567_onlinetext_onlinetext.html")}


def check_collect_patterns():
    """Every case of COLLECT_CASES collects to its student and notebook, under a course path with underscores."""
    from nbgrader.plugins.zipcollect import FileNameCollectorPlugin
    from traitlets.config import Config
    namespace = {"get_config": Config}
    saved = os.environ.get("FACEAGE_GRADING")
    exec((Path(__file__).with_name("nbgrader_config.py")).read_text(encoding="utf-8"), namespace)
    if saved is None:  # reading the config sets grading mode; this process trains nothing, but leave it as found
        os.environ.pop("FACEAGE_GRADING", None)
    base = "/home/t_eacher/my_course_2026/downloaded/faceage/extracted/"
    for (lms, name), (student, notebook) in COLLECT_CASES.items():
        plugin = FileNameCollectorPlugin(named_regexp=namespace["LMS_PATTERNS"][lms])
        got = plugin.collect(base + name)
        if not got or (got["student_id"], os.path.splitext(got["file_id"])[0]) != (student, notebook):
            fail(f"the {lms} pattern collects {base + name} as {got}, not student {student}, notebook {notebook}.")
    for lms, name in NOT_COLLECTED:
        plugin = FileNameCollectorPlugin(named_regexp=namespace["LMS_PATTERNS"][lms])
        got = plugin.collect(base + name)
        if got and got["file_id"].endswith(tuple(Path(n).stem for n in ms.fh.NOTEBOOKS)):
            fail(f"the {lms} pattern collects {name} as a notebook: {got}.")


# --- the submissions ---------------------------------------------------------------------------------

def source_notebook(name):
    return nbformat.read(COURSE / "source" / ms.ASSIGNMENT / name, as_version=4)


def without_hidden(nb):
    """A source notebook as a student who wrote the solutions would hand it in: the hidden tests are not there."""
    for cell in nb.cells:
        if "### BEGIN HIDDEN TESTS" in cell.source:
            cell.source = cell.source[:cell.source.index("### BEGIN HIDDEN TESTS")].rstrip("\n")
    return nb


def replace_def(nb, name, source):
    """The notebook with the `def name` of its solution cell replaced by source (kept as a #@save cell)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and re.search(rf"^def {name}\(", cell.source, re.MULTILINE) \
                and cell.metadata.get("nbgrader", {}).get("solution"):
            cell.source = "#@save\n" + source.strip()
            return nb
    fail(f"no solution cell defines {name}")


def insert_before_check(nb, name, source):
    """A cell of the student's own, right before the check cell of name."""
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code" and f"fh.check_{name}(" in cell.source:
            nb.cells.insert(index, nbformat.v4.new_code_cell(source))
            return nb
    fail(f"no check cell of {name}")


WRONG_BACKWARD = '''
def backward(params, cache, dy_hat):
    X, Z, H = cache
    dH = dy_hat[:, None] * params["W2"]
    return {"W1": dH.T @ X, "b1": dH.sum(axis=0), "W2": dy_hat[None, :] @ H, "b2": dy_hat.sum(keepdims=True)}
'''
WRONG_MSE_LOSS = '''
def mse_loss(y_hat, y):
    diff = y_hat - y
    return float(np.sum(diff ** 2)), 2 * diff
'''
STORED_MSE_LOSS = '''
def mse_loss(y_hat, y):  # the answers the visible check compares with, computed nowhere
    n = len(y)
    return float(fh._answer(f"mse_loss{n}.loss")), fh._answer(f"mse_loss{n}.dy_hat")
'''
REFERENCE_FORWARD = '''
import faceage_reference


def forward(params, X):  # a wrapper around the teacher's released reference
    return faceage_reference.forward(params, X)
'''
DISABLED_CHECK = 'fh.check_backward = lambda f: print("backward: all checks passed.")'
DOCTORED_MODULE = '''
def check_sgd_step(sgd_step):
    print("sgd_step: all checks passed.")
'''
WRONG_SGD_STEP = '''
def sgd_step(params, grads, lr):
    for name, p in params.items():
        p += lr * grads[name]
'''


def write_submission(folder: Path, notebooks: dict, extra=()):
    folder.mkdir(parents=True)
    for name, nb in notebooks.items():
        nbformat.write(nb, folder / name)
    for name, content in extra:
        (folder / name).write_bytes(content)


def submissions(graded: list, reference: Path) -> dict:
    """{student: (notebooks, extra files)} of the six kinds of student."""
    solved = {name: without_hidden(source_notebook(name)) for name in graded}
    blank = {name: nbformat.read(COURSE / "release" / ms.ASSIGNMENT / name, as_version=4) for name in graded}
    nb02, nb03 = "02_backprop_and_gradient_checking.ipynb", "03_training_with_sgd.ipynb"

    def changed(edits):
        out = {name: nbformat.from_dict(nb) for name, nb in solved.items()}
        for name, edit in edits:
            out[name] = edit(out[name])
        return out
    mistakes = changed([(nb02, lambda nb: replace_def(nb, "backward", WRONG_BACKWARD)),
                        (nb02, lambda nb: replace_def(nb, "mse_loss", WRONG_MSE_LOSS))])
    cheats = changed([(nb02, lambda nb: replace_def(nb, "forward", REFERENCE_FORWARD)),
                      (nb02, lambda nb: replace_def(nb, "mse_loss", STORED_MSE_LOSS)),
                      (nb02, lambda nb: replace_def(nb, "backward", WRONG_BACKWARD)),
                      (nb02, lambda nb: insert_before_check(nb, "backward", DISABLED_CHECK)),
                      (nb03, lambda nb: replace_def(nb, "sgd_step", WRONG_SGD_STEP))])
    module = (COURSE / "source" / ms.ASSIGNMENT / ms.MODULE).read_text(encoding="utf-8") + DOCTORED_MODULE
    buffer = io.BytesIO()
    import numpy as np
    np.savez(buffer, nothing=np.zeros(1))
    cheat_files = [(ms.MODULE, module.encode()), (ms.ANSWERS_FILE, buffer.getvalue()),
                   ("faceage_reference.py", reference.read_bytes())]
    runaway = "while True:  # a runaway loop\n    pass"
    looping = changed([(nb03, lambda nb: insert_before_check(nb, "sgd_step", runaway))])
    return {"solutions": (solved, ()), "blank": (blank, ()), "mistakes": (mistakes, ()),
            "cheats": (cheats, cheat_files), "loops": (looping, ())}


def canvas_zip(students: dict, target: Path):
    """One zip as Canvas's "Download Submissions" gives it: login_userid_submissionid_notebook.ipynb."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target, "w") as z, tempfile.TemporaryDirectory() as tmp:
        for number, (student, (notebooks, _)) in enumerate(students.items(), 1):
            for k, (name, nb) in enumerate(notebooks.items()):
                late = "_late" if student == "mistakes" else ""
                again = "-1" if (student == "blank" and k == 0) else ""
                path = Path(tmp) / f"{student}{late}_{number}_{100 + k}_{Path(name).stem}{again}.ipynb"
                nbformat.write(nb, path)
                z.write(path, path.name)
    return {str(number): student for number, student in enumerate(students, 1)}


# --- grades ---------------------------------------------------------------------------------------

def scores(student: str) -> dict:
    """{grade cell id: (autograded score, maximum)} of a student's submission, from the gradebook."""
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{COURSE / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission(ms.ASSIGNMENT, student)
        return {g.name: (g.auto_score or 0, g.max_score) for nb in submission.notebooks for g in nb.grades
                if g.cell_type == "code"}


def expect(student, got: dict, lost: set):
    """Every check cell scores its maximum except those in lost, which score 0."""
    wrong = {cell: score for cell, (score, top) in got.items() if score != (0 if cell.split("-check_")[-1] in lost
                                                                          else top)}
    if wrong:
        fail(f"{student}: unexpected scores {wrong} (only {sorted(lost) or 'nothing'} should lose points).")


def check_feedback(feedback: Path):
    """No hidden test and no path of the grading machine in any feedback file."""
    files = list(feedback.rglob("*.html"))
    if not files:
        fail(f"no feedback in {feedback}")
    machine = [str(COURSE), str(ROOT), tempfile.gettempdir() + "/", sys.prefix]
    for path in files:
        text = path.read_text(encoding="utf-8")
        for needle in ["BEGIN HIDDEN TESTS", "_hidden_test", "fresh random problems"] + machine:
            if needle in text:
                fail(f"feedback {path.relative_to(COURSE)} holds {needle!r}.")


def main(notebooks_dir="notebooks"):
    if importlib.util.find_spec("nbgrader") is None:
        fail("nbgrader is not installed: run `make grading-check` (it installs requirements-teacher.txt into "
             "build/teacher-site/).")
    check_collect_patterns()
    shutil.rmtree(COURSE, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="faceage-grading-") as tmp:
        tmp = Path(tmp)
        with contextlib.redirect_stdout(io.StringIO()):  # one line of output, at the end
            ms.make_student(notebooks_dir, tmp / "student", nbgrader_dir=COURSE)
            reference = ms.write_reference(notebooks_dir, tmp / "reference" / "faceage_reference.py")
        source = COURSE / "source" / ms.ASSIGNMENT
        graded = sorted(p.name for p in source.glob("*.ipynb")
                        if any(c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
                               for c in nbformat.read(p, as_version=4).cells))
        exchange = tmp / "exchange"
        exchange.mkdir(mode=0o777)
        env = dict(os.environ, FACEAGE_EXCHANGE=str(exchange))
        blocks = teaching_blocks()
        run_block(blocks, "release", env)

        # the exchange: a student fetches, adds a stray file, submits; collect takes only what a submission is
        home = tmp / "home"
        home.mkdir()
        student_args = ["--course", ms.ASSIGNMENT, f"--Exchange.root={exchange}"]
        nbgrader("fetch_assignment", ms.ASSIGNMENT, *student_args, cwd=home)
        (home / ms.ASSIGNMENT / "faceage_reference.py").write_bytes(reference.read_bytes())
        nbgrader("submit", ms.ASSIGNMENT, *student_args, cwd=home)

        students = submissions(graded, reference)
        ids = canvas_zip(students, COURSE / "downloaded" / ms.ASSIGNMENT / "archive" / "canvas.zip")
        run_block(blocks, "collect", env)
        exchange_students = [p.name for p in (COURSE / "submitted").iterdir() if p.name not in ids]
        for student in exchange_students:
            if (COURSE / "submitted" / student / ms.ASSIGNMENT / "faceage_reference.py").exists():
                fail("the exchange's collect took a file the student added (faceage_reference.py).")
            shutil.rmtree(COURSE / "submitted" / student)  # the fetched release, graded as "blank" below
        for number, student in ids.items():  # the files a student adds beside the notebooks (zip_collect takes
            for name, content in students[student][1]:  # notebooks only: as if handed in another way)
                (COURSE / "submitted" / number / ms.ASSIGNMENT / name).write_bytes(content)
        solutions = next(number for number, s in ids.items() if s == "solutions")
        start = time.perf_counter()
        nbgrader("autograde", ms.ASSIGNMENT, "--student", solutions, env=env)
        seconds = time.perf_counter() - start
        start = time.perf_counter()
        run_block(blocks, "grade", env)
        others = time.perf_counter() - start
        run_block(blocks, "feedback", env)
        run_block(blocks, "export", env)

        got = {student: scores(number) for number, student in ids.items()}
        total = sum(top for _, top in got["solutions"].values())
        solved, blank = (sum(s for s, _ in got[k].values()) for k in ("solutions", "blank"))
        expect("solutions", got["solutions"], set())
        expect("loops", got["loops"], set())
        expect("mistakes", got["mistakes"], {"backward", "mse_loss"})
        expect("cheats", got["cheats"], {"forward", "mse_loss", "backward", "sgd_step"})
        timeout = int(re.search(r"c\.Execute\.timeout = (\d+)", (COURSE / "nbgrader_config.py").read_text()).group(1))
        if others > 4 * seconds + timeout + LOOP_SECONDS_MARGIN:
            fail(f"autograding the other four submissions took {others:.0f} s: the runaway loop was not stopped in "
                 f"time (per-cell timeout {timeout} s).")
        check_feedback(COURSE / "feedback")
        if not (COURSE / "grades.csv").is_file() or not list(COURSE.glob("feedback-*.zip")):
            fail("TEACHING.md's feedback and export commands wrote no feedback zips or grades.csv.")
    print(f"nbgrader autograde: solutions {solved:g}/{total:g} points, blank exercises {blank:g}/{total:g} points, "
          f"{seconds:.0f} s per submission")
    return 0 if solved == total > 0 and blank == 0 and seconds <= 60 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
