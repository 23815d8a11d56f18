"""An example nbgrader configuration for the FaceAge course (copied next to source/ by `make student`).

Run nbgrader from the folder holding this file and source/faceage/ (e.g. build/nbgrader/).
"""
c = get_config()  # noqa: F821 (nbgrader provides get_config when it reads this file)

c.CourseDirectory.course_id = "faceage"
c.CourseDirectory.root = "."
# The released assignment carries the module without answers and the checks' answers beside the
# notebooks (nbgrader copies every file of source/faceage/); never data.zip: point FACEAGE_DATA at a
# shared copy instead (see TEACHING.md).

# Autograding runs every notebook top to bottom. Notebook 03 trains several networks: a training
# cell can take minutes on a busy grading server, so allow 15 minutes per cell.
c.Execute.timeout = 900

# `nbgrader zip_collect faceage` reads an LMS download (one zip of every submission) from
# downloaded/faceage/archive/. Each file in it is named <student>_<...>_<notebook>.ipynb (Canvas:
# "doejane_12345_67890_02_backprop_and_gradient_checking.ipynb"; late ones have "_late" after the
# login). This pattern takes the student id from the first part and the notebook name from the end;
# adapt it to your LMS's naming.
c.ZipCollectApp.collector_plugin = "nbgrader.plugins.zipcollect.FileNameCollectorPlugin"
c.FileNameCollectorPlugin.named_regexp = (
    r"^(?P<student_id>[^_]+)(_late)?_\d+(_\d+)?_(?P<file_id>\d\d_[A-Za-z0-9_]+\.ipynb)$")
