"""Prove the nbgrader course grades: solutions get every point, the untouched classroom edition none.

Builds the course of tools/make_student.py --nbgrader in a temporary folder, releases the
assignment (nbgrader generate_assignment), hands in two submissions, autogrades both, and ends
with exactly one line:

    nbgrader autograde: solutions S/T points, blank exercises B/T points

T counts the autograded points (the check cells); written answers are graded by hand and are not
in it. Only the notebooks with graded cells are handed in, to keep the run short. Exits non-zero
unless S = T and B = 0. Needs nbgrader (`make grading-check` installs it from requirements-teacher.txt)
and data.zip (FACEAGE_DATA), as the notebooks do.

Usage: python tools/grading_check.py [NOTEBOOKS_DIR]     (run by `make grading-check`)
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_student as ms  # noqa: E402


def nbgrader(course: Path, *args):
    """Run one nbgrader command in the course folder; stop with its output if it fails."""
    spec = importlib.util.find_spec("nbgrader")
    if spec is None:
        sys.exit("grading_check: nbgrader is not installed: run `make grading-check` (it installs "
                 "requirements-teacher.txt into build/teacher-site/).")
    scripts = Path(spec.origin).parents[1] / "bin"  # nbgrader runs the alembic command it installed
    env = dict(os.environ, PATH=f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}")
    result = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course, capture_output=True, text=True,
                            env=env)
    if result.returncode != 0:
        sys.exit(f"grading_check: nbgrader {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result


def hand_in(folder: Path, target: Path, graded: list):
    """A submission: the graded notebooks of folder and every other file of it (module, answers)."""
    target.mkdir(parents=True)
    for path in folder.iterdir():
        if path.suffix != ".ipynb" or path.name in graded:
            shutil.copy2(path, target / path.name)


def points(course: Path, student: str) -> tuple[float, float]:
    """(autograded score, autogradable maximum) of a student's submission, from the gradebook."""
    from nbgrader.api import Gradebook
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gradebook:
        submission = gradebook.find_submission(ms.ASSIGNMENT, student)
        grades = [g for nb in submission.notebooks for g in nb.grades if g.cell_type == "code"]
        return sum(g.auto_score or 0 for g in grades), sum(g.max_score for g in grades)


def main(notebooks_dir="notebooks"):
    with tempfile.TemporaryDirectory(prefix="faceage-grading-") as tmp:
        course = Path(tmp) / "course"
        with contextlib.redirect_stdout(io.StringIO()):  # one line of output, at the end
            ms.make_student(notebooks_dir, Path(tmp) / "student", nbgrader_dir=course)
        source = course / "source" / ms.ASSIGNMENT
        graded = sorted(p.name for p in source.glob("*.ipynb")
                        if any(c.metadata.get("nbgrader", {}).get("grade") and c.cell_type == "code"
                               for c in nbformat.read(p, as_version=4).cells))
        nbgrader(course, "generate_assignment", ms.ASSIGNMENT, "--force")
        for student, folder in (("solutions", source), ("blank", course / "release" / ms.ASSIGNMENT)):
            nbgrader(course, "db", "student", "add", student)
            hand_in(folder, course / "submitted" / student / ms.ASSIGNMENT, graded)
        nbgrader(course, "autograde", ms.ASSIGNMENT, "--force")
        (solved, total), (blank, _) = points(course, "solutions"), points(course, "blank")
    print(f"nbgrader autograde: solutions {solved:g}/{total:g} points, blank exercises {blank:g}/{total:g} points")
    return 0 if solved == total > 0 and blank == 0 else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
