"""The nbgrader configuration of the FaceAge course (copied next to source/ by `make student`).

Run nbgrader from the folder holding this file and source/faceage/ (e.g. build/nbgrader/), as TEACHING.md
shows. tools/grading_check.py runs this file's settings on every `make grading-check`.
"""
import os
import re

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor, Preprocessor
from nbgrader.preprocessors import ClearHiddenTests, GetGrades
from traitlets import Bool

c = get_config()  # noqa: F821 (nbgrader provides get_config when it reads this file)

c.CourseDirectory.course_id = "faceage"
c.CourseDirectory.root = "."
# The released assignment carries the module without answers and the checks' answers beside the
# notebooks (nbgrader copies every file of source/faceage/); never data.zip: point FACEAGE_DATA at a
# shared copy instead (see TEACHING.md).

# --- what a submission is: its notebooks, nothing else ------------------------------------------------
# The exchange (release_assignment, submit, collect) copies only these files, so a file a student adds
# (a faceage_reference.py, a numpy.py) never reaches the grader; zip_collect takes .ipynb files only.
c.CourseDirectory.include = ["*.ipynb", "faceage_helpers.py", "check_answers.npz", "timestamp.txt"]
# autograde then overwrites every non-notebook file with the source's version: a doctored
# faceage_helpers.py or check_answers.npz handed in is replaced (nbgrader's default, stated here on purpose).
c.Autograde.exclude_overwriting = {}
# The JupyterHub exchange's root (nbgrader's default is /srv/nbgrader/exchange; it must exist, writable by all).
c.Exchange.root = os.environ.get("FACEAGE_EXCHANGE", "/srv/nbgrader/exchange")

# --- fast, bounded grading -------------------------------------------------------------------------
# Every kernel nbgrader starts inherits this: fh.load_data keeps 2,000 training and 500 test faces, fh.train
# trains 1 epoch on 1,000 of them, and both say so in the cell's output ("grading mode ..."). No points depend
# on training results; the hidden tests grade.
os.environ["FACEAGE_GRADING"] = "1"
# The slowest honest cell took 2.7 s in grading mode on a busy 2-core machine; a cell that runs
# longer than this is stopped (a `while True` costs a minute, not hours) and the notebook goes on.
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True

# --- collecting an LMS download: `nbgrader zip_collect faceage` -----------------------------------
# nbgrader matches the pattern against the ABSOLUTE path of each extracted file (re.match), so each
# pattern skips any folders first and reads the file name alone; a course path with underscores is fine.
# student_id is the LMS's numeric user id (unique and stable; the LMS's grade upload lists it too).
# file_id is the notebook's name: an LMS's resubmission suffix ("-1") is dropped, so the notebook lands
# under its released name; two files of one notebook in one student's download stop nbgrader (it has no
# timestamps to choose by), as nbgrader intends.
# Canvas ("Download Submissions"): doejane_12345_67890_02_backprop_and_gradient_checking.ipynb, late:
# doejane_late_12345_67890_..., re-uploaded: ..._02_backprop_and_gradient_checking-1.ipynb.
CANVAS = (r"^(?:.*/)?[^/_]+(?:_(?i:late))?_(?P<student_id>\d+)_\d+_"
          r"(?P<file_id>\d\d_[^/]+?)(?:-\d+)?\.ipynb$")
# Moodle ("Download all submissions"): "Jane Doe_1234567_assignsubmission_file_02_backprop_....ipynb", or with
# "Download submissions in folders", "Jane Doe_1234567_assignsubmission_file/02_backprop_....ipynb".
MOODLE = (r"^(?:.*/)?[^/]*?_(?P<student_id>\d+)_assignsubmission_file[_/]"
          r"(?P<file_id>\d\d_[^/]+?)(?:-\d+)?\.ipynb$")
LMS_PATTERNS = {"canvas": CANVAS, "moodle": MOODLE}
c.ZipCollectApp.collector_plugin = "nbgrader.plugins.zipcollect.FileNameCollectorPlugin"
c.FileNameCollectorPlugin.named_regexp = LMS_PATTERNS[os.environ.get("FACEAGE_LMS", "canvas")]


# --- feedback: no hidden test, no path of the grading machine ------------------------------------
class SanitizeFeedback(Preprocessor):
    """Every output of the feedback: tracebacks cut to their last line, folders cut from absolute paths."""

    enabled = Bool(True)  # nbconvert's own preprocessors start disabled

    PATH = re.compile(r"(?:/[^\s/'\"<>():]+)+/(?=[^\s/'\"<>():]+)")

    def _clean(self, text):
        return self.PATH.sub("", text)

    def preprocess_cell(self, cell, resources, index):
        for output in cell.get("outputs", []):
            if output.get("output_type") == "error":
                output["evalue"] = self._clean(output.get("evalue", ""))
                output["traceback"] = [f"{output.get('ename', 'Error')}: {output['evalue']}"]
            if "text" in output:
                output["text"] = self._clean(output["text"])
            for kind, value in output.get("data", {}).items():
                if kind.startswith("text/") and isinstance(value, str):
                    output["data"][kind] = self._clean(value)
        return cell, resources


c.GenerateFeedback.preprocessors = [GetGrades, ClearHiddenTests, SanitizeFeedback, CSSHTMLHeaderPreprocessor]
