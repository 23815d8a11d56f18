"""Serve notebook 04 (or 06) with JupyterLab or Voila and drive its sliders in headless Chromium.

Shared by tests/test_browser.py and benchmarks/bench_slider.py (no pytest in here). A server always
serves a temporary copy (the committed notebook is never modified), listens on 127.0.0.1 only with a
random token, keeps its Jupyter config, settings and runtime files in that temporary folder (nothing
is written to ~ or the repository), and is always stopped, together with the kernels it started.
"""
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "04_browse_the_learned_weights.ipynb"
BROWSERS_04 = ("unit", "epoch")  # the sliders (by description) the tests move in notebook 04
CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; a browser is never downloaded
# Headless on a machine without a display or GPU; the networking flags stop Chromium from trying to
# reach Google's servers (sync, updates, field trials), which only slows it down here.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1280, "height": 900}
# Seconds to run the whole notebook. Its training takes ~10 s on a quiet machine and minutes on a
# busy shared one; a cell that raises ends the wait at once (NotebookError), so generous costs nothing.
NOTEBOOK_TIMEOUT = 600

# ipywidgets 8 DOM: a slider is .widget-slider with a <label> (its description), a noUiSlider track
# (.noUi-target) with its handle (.noUi-handle) and a readout; ipywidgets.HTML renders its text in
# .widget-html-content; the figure is an <img> inside the Output widget (.widget-output).
SLIDER_HANDLE = ".widget-slider .noUi-handle"
SLIDER_TRACK = ".widget-slider .noUi-target"
CAPTION = ".widget-html .widget-html-content"
PLOT = ".widget-output img"


def missing_browser_reason():
    """Why the browser tests cannot run here (a sentence), or None if they can."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is missing: pip install -r requirements.txt"
    return None


def free_port():
    """A TCP port that is free on 127.0.0.1 right now (the server is told not to move if it is taken)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_copy(notebook, workdir):
    """Lay out workdir like the repository: notebooks/<copy> and faceage_helpers.py at its root.

    Notebooks 02 and 03 are copied beside it: fh.lesson_functions() reads the functions that train
    from them (fh.LESSON_FUNCTIONS).
    """
    workdir = Path(workdir)
    (workdir / "notebooks").mkdir(parents=True, exist_ok=True)
    for lesson in [*(REPO / "notebooks").glob("02_*.ipynb"), *(REPO / "notebooks").glob("03_*.ipynb")]:
        shutil.copy2(lesson, workdir / "notebooks" / lesson.name)
    shutil.copy2(notebook, workdir / "notebooks" / Path(notebook).name)
    shutil.copy2(REPO / "faceage_helpers.py", workdir / "faceage_helpers.py")
    return workdir / "notebooks" / Path(notebook).name


def write_lab_settings(settings_dir):
    """JupyterLab user settings for the test: all cells stay in the page (no virtual scrolling), no news."""
    settings = {
        # Off-screen cells are otherwise not rendered, and their widgets cannot be found.
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": '{"windowingMode": "none"}',
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings":
            '{"fetchNews": "false", "checkForUpdates": false}',
    }
    for name, text in settings.items():
        path = Path(settings_dir) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def server_env(workdir):
    """The environment for a server and its kernels: Jupyter's own files under workdir/.jupyter."""
    env = dict(os.environ)  # keeps FACEAGE_DATA, so the notebook finds data.zip
    # `make test` sets MPLBACKEND=Agg for the unit tests; a kernel with Agg shows no figures at all.
    env.pop("MPLBACKEND", None)
    tmp = Path(workdir) / "tmp"  # Voila's connection files, kernels' scratch files
    tmp.mkdir(parents=True, exist_ok=True)
    env["TMPDIR"] = str(tmp)
    home = Path(workdir) / ".jupyter"
    dirs = dict(JUPYTER_CONFIG_DIR="config", JUPYTER_DATA_DIR="data", JUPYTER_RUNTIME_DIR="runtime",
                JUPYTERLAB_SETTINGS_DIR="lab-settings", JUPYTERLAB_WORKSPACES_DIR="lab-workspaces",
                IPYTHONDIR="ipython", MPLCONFIGDIR="matplotlib")
    for var, sub in dirs.items():
        (home / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(home / sub)
    write_lab_settings(env["JUPYTERLAB_SETTINGS_DIR"])
    return env


def _start_time(pid):
    """When process `pid` started (clock ticks after boot), or None if it is gone: tells a reused pid apart."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])  # a zombie has already exited
    except (OSError, IndexError, ValueError):
        return None


def _descendants(pid):
    """(pid, start time) of every process below `pid`, from /proc (empty where there is no /proc)."""
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return [(p, _start_time(p)) for p in found]


class Server:
    """A JupyterLab or Voila process serving one notebook copy; `url` opens that notebook."""

    def __init__(self, kind, notebook, workdir, theme="light"):
        if kind not in ("lab", "voila"):
            raise ValueError(f"kind must be 'lab' or 'voila', not {kind!r}")
        self.kind, self.workdir = kind, Path(workdir)
        self.copy = prepare_copy(notebook, self.workdir)
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / f"{kind}.log"
        common = [f"--port={self.port}", "--no-browser"]
        if kind == "lab":
            self.command = [sys.executable, "-m", "jupyterlab", *common,
                            "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
                            f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.workdir}",
                            "--LabApp.news_url=None",
                            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                self.command.append("--allow-root")
            rel = self.copy.relative_to(self.workdir).as_posix()
            # ?reset starts from an empty workspace: only this notebook is open.
            self.url = f"{self.base}/lab/tree/{rel}?reset&token={self.token}"
            self.probe = f"{self.base}/api/status?token={self.token}"
        else:
            voila = Path(sys.executable).with_name("voila")
            self.command = [str(voila), str(self.copy), *common, "--Voila.ip=127.0.0.1",
                            "--Voila.port_retries=0", f"--Voila.token={self.token}",
                            f"--theme={theme}", "--show_tracebacks=True"]
            self.url = f"{self.base}/?token={self.token}"
            # A static file: asking for "/" would already run the notebook.
            self.probe = f"{self.base}/voila/static/voila.js"
        self.process = None
        self.descendants = []  # (pid, start time) of the server's children, recorded when it is stopped

    def start(self, timeout=60):
        """Start the server and wait until it answers HTTP; raise RuntimeError with its log if not."""
        env = server_env(self.workdir)
        with open(self.log_path, "wb") as log:
            # A new session: one process group to stop (kernels get groups of their own: see stop).
            self.process = subprocess.Popen(self.command, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with code {self.process.returncode} before it "
                                   f"answered on port {self.port}\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.probe, timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.kind} did not answer {self.probe} within {timeout} s\n{self.log_tail()}")

    def stop(self):
        """Stop the server and its kernels: SIGTERM first (the server shuts its kernels down), then SIGKILL.

        Kernels run in process groups of their own (jupyter_client starts them in a new session), so
        they are found by walking the process tree before the server goes, and killed if still there.
        """
        if self.process is None or self.process.poll() is not None:
            return
        self.descendants = _descendants(self.process.pid)
        pgid = self.process.pid  # start_new_session made the server its group's leader
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        self.process.wait(timeout=10)
        deadline = time.monotonic() + 5
        while self.leftovers() and time.monotonic() < deadline:
            time.sleep(0.1)  # kernels told to shut down by the server exit on their own
        for pid, _ in self.leftovers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def leftovers(self):
        """The server's child processes (kernels) that are still running, as (pid, start time) pairs."""
        return [(pid, start) for pid, start in self.descendants if _start_time(pid) == start]

    def log_tail(self, lines=40):
        """The last lines of the server's log, for failure messages."""
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        redacted = [line.replace(self.token, "<token>") for line in text[-lines:]]
        return f"--- last {len(redacted)} lines of {self.log_path} ---\n" + "\n".join(redacted)


@contextlib.contextmanager
def serve(kind, workdir, notebook=NOTEBOOK, timeout=60, theme="light"):
    """Serve a copy of `notebook` in `workdir` with JupyterLab or Voila; always stopped on exit."""
    server = Server(kind, notebook, workdir, theme=theme)
    try:
        yield server.start(timeout)
    finally:
        server.stop()


@contextlib.contextmanager
def chromium():
    """A headless Debian Chromium driven by Playwright; yields a fresh page (closed on exit)."""
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            yield page
        finally:
            browser.close()


# -----------------------------------------------------------------------------
# Driving the page
# -----------------------------------------------------------------------------

class NotebookError(AssertionError):
    """The served notebook failed in the page: a cell raised (the message ends with its traceback),
    or a widget shows as text instead of a slider."""


# JavaScript: true when some output of the page shows a Python traceback (a cell raised).
_HAS_TRACEBACK = """[...document.querySelectorAll('.jp-OutputArea-output')]
    .some(out => out.textContent.includes('Traceback (most recent call last)'))"""

# JavaScript: true when a widget shows as text instead of a slider: its plain-text form, e.g.
# IntSlider(value=0) or the notebook's "[unit browser ...: a slider; ...]", or JupyterLab's error.
_WIDGET_AS_TEXT = """[...document.querySelectorAll('.jp-OutputArea-output')].some(out =>
    /^\\s*((VBox|HBox|IntSlider|Output|HTML)\\(|\\[.*slider.*\\]\\s*$)/.test(out.textContent)
    || out.textContent.includes('Error displaying widget'))"""

# The page has every wanted browser, each with its figure ('ready'), or a traceback ('error'), or not yet.
_BROWSERS_STATUS = """([plotSel, wanted]) => {
    if (%s) return 'error';
    if (%s) return 'text';
    const names = [...document.querySelectorAll('.widget-vbox')]
        .filter(box => box.querySelector(plotSel))
        .map(box => (box.querySelector('.widget-slider .widget-label') || {textContent: ''}).textContent.trim());
    return wanted.every(name => names.includes(name)) ? 'ready' : '';
}""" % (_HAS_TRACEBACK, _WIDGET_AS_TEXT)

# Every code cell has an execution count ([3]:) once it ran ('done'); [*]: while queued or running.
_ALL_RAN_STATUS = """() => {
    if (%s) return 'error';
    const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')];
    return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent)) ? 'done' : '';
}""" % _HAS_TRACEBACK


def _wait_for_status(page, js, arg=None, timeout=NOTEBOOK_TIMEOUT):
    """Poll `js` until it returns a status; NotebookError on 'error' (with the traceback) or 'text'."""
    status = page.wait_for_function(js, arg=arg, timeout=timeout * 1000, polling=250).json_value()
    if status == "error":
        text = page.evaluate("""() => [...document.querySelectorAll('.jp-OutputArea-output')]
            .map(o => o.textContent).filter(t => t.includes('Traceback (most recent call last)')).join('\\n')""")
        raise NotebookError("a cell of the notebook raised:\n" + text[-2500:])
    if status == "text":
        raise NotebookError("a widget shows as text (e.g. IntSlider(value=0)) or as 'Error displaying "
                            "widget', not as a slider: the ipywidgets front end did not load or lost its "
                            "kernel (is jupyterlab_widgets installed?)")
    return status


def open_in_voila(page, server, timeout=NOTEBOOK_TIMEOUT, names=BROWSERS_04):
    """Open the Voila dashboard and wait for the browsers `names` (Voila runs the notebook while the page loads)."""
    page.goto(server.url, wait_until="commit")
    wait_for_weight_browsers(page, timeout, names)


def open_in_lab(page, server, timeout=NOTEBOOK_TIMEOUT, names=BROWSERS_04):
    """Open the notebook in JupyterLab, run all its cells and wait for the browsers `names`."""
    page.goto(server.url)
    run_all_cells_in_lab(page, timeout, names)


def wait_for_weight_browsers(page, timeout=NOTEBOOK_TIMEOUT, names=BROWSERS_04):
    """Wait until every browser in `names` (slider descriptions) shows a figure; NotebookError if a cell raised."""
    _wait_for_status(page, _BROWSERS_STATUS, arg=[PLOT, list(names)], timeout=timeout)


def run_all_cells_in_lab(page, timeout=NOTEBOOK_TIMEOUT, names=BROWSERS_04):
    """In JupyterLab: wait for the kernel, clear all outputs, run all cells, wait until every cell ran."""
    # The toolbar can say idle before the kernel is connected: the status bar's text is the sure sign.
    page.locator("#jp-main-statusbar .jp-StatusBar-TextItem", has_text=re.compile(r"\| Idle")).wait_for(
        timeout=120_000)
    # Clearing first resets the committed execution counts ([1]:) and drops the saved widgets, so
    # what the test sees afterwards can only come from this run.
    for menu, item in (("Edit", "Clear Outputs of All Cells"), ("Run", "Run All Cells")):
        page.get_by_role("menuitem", name=menu, exact=True).click()
        page.get_by_role("menuitem", name=re.compile("^" + item)).click()
    _wait_for_status(page, _ALL_RAN_STATUS, timeout=timeout)
    wait_for_weight_browsers(page, timeout=30, names=names)


def weight_browser(page, name):
    """The VBox of the browser whose slider description is `name` ("unit", "epoch", "face")."""
    label = page.locator(".widget-slider .widget-label", has_text=re.compile(rf"^\s*{name}\s*$"))
    return page.locator(".widget-vbox").filter(has=label).filter(has=page.locator(PLOT)).last


def state(box):
    """One browser as the page shows it: slider value, min and max, caption text, figure's image src."""
    return box.evaluate(
        """(box, [handleSel, capSel, plotSel]) => {
            const handle = box.querySelector(handleSel), num = name => Number(handle.getAttribute(name));
            return {value: num('aria-valuenow'), min: num('aria-valuemin'), max: num('aria-valuemax'),
                    caption: box.querySelector(capSel).textContent.trim(), src: box.querySelector(plotSel).src};
        }""", [SLIDER_HANDLE, CAPTION, PLOT])


def wait_for_redraw(box, name, value, old_src, timeout=30):
    """Wait until the caption starts with "<name> <value>" and the figure's <img> has a new, loaded src."""
    box.page.wait_for_function(
        """([box, prefix, oldSrc, capSel, plotSel]) => {
            const cap = box.querySelector(capSel), img = box.querySelector(plotSel);
            return !!cap && !!img && new RegExp('^' + prefix + '(?!\\\\d)').test(cap.textContent.trim())
                   && img.src !== oldSrc && img.complete && img.naturalWidth > 0;
        }""",
        arg=[box.element_handle(), f"{name} {value}", old_src, CAPTION, PLOT],
        timeout=timeout * 1000, polling="raf")


def focus_slider(box):
    """Give the slider's handle the keyboard focus (as a Tab or a click would)."""
    handle = box.locator(SLIDER_HANDLE)
    handle.scroll_into_view_if_needed()
    handle.focus()


def press_key(box, key="ArrowRight"):
    """Move the slider one step with the keyboard: focus its handle, press `key` (ArrowRight/ArrowLeft)."""
    focus_slider(box)
    box.page.keyboard.press(key)


def drag_to(box, fraction):
    """Drag the slider's handle with the mouse to `fraction` (0..1) of the track's width."""
    page = box.page
    box.locator(SLIDER_TRACK).scroll_into_view_if_needed()
    handle, track = box.locator(SLIDER_HANDLE).bounding_box(), box.locator(SLIDER_TRACK).bounding_box()
    y = handle["y"] + handle["height"] / 2
    page.mouse.move(handle["x"] + handle["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(track["x"] + fraction * track["width"], y, steps=8)
    page.mouse.up()


def click_track_at(box, fraction):
    """Click the slider's track at `fraction` (0..1) of its width: the handle jumps there."""
    box.locator(SLIDER_TRACK).scroll_into_view_if_needed()
    track = box.locator(SLIDER_TRACK).bounding_box()
    box.page.mouse.click(track["x"] + fraction * track["width"], track["y"] + track["height"] / 2)


# -----------------------------------------------------------------------------
# Notebook 08: the own-face browser (an upload button and four sliders in one box)
# -----------------------------------------------------------------------------
NOTEBOOK_08 = REPO / "notebooks" / "08_your_own_face.ipynb"
SLIDERS_08 = ("centre x", "centre y", "size", "angle")  # the own-face browser's sliders, by description
UPLOAD_BUTTON = "button.widget-upload"  # ipywidgets 8: a button that opens a file chooser (its input is detached)


def copy_lessons(workdir, before="08"):
    """Copy every notebook numbered below `before` into workdir/notebooks: fh.lesson_functions(before=...)
    runs their `#@save` cells (notebook 08 needs 06's backward_to_input as well as 02's and 03's code)."""
    folder = Path(workdir) / "notebooks"
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        if path.name[:2] < before:
            shutil.copy2(path, folder / path.name)


def own_face_slider(box, name):
    """The `.widget-slider` of the own-face browser whose description is `name` ("centre x", "size", ...)."""
    label = box.page.locator(".widget-label", has_text=re.compile(rf"^\s*{name}\s*$"))
    return box.locator(".widget-slider").filter(has=label)


def slider_value(slider):
    """The value an ipywidgets slider shows (its noUiSlider handle's aria-valuenow)."""
    return int(float(slider.locator(".noUi-handle").get_attribute("aria-valuenow")))


def wait_for_caption(box, text, old_src=None, timeout=30):
    """Wait until the browser's caption contains `text` and its figure's <img> is loaded, with a src other
    than old_src if given (a refused upload redraws the same picture, so its src may not change)."""
    box.page.wait_for_function(
        """([box, text, oldSrc, capSel, plotSel]) => {
            const cap = box.querySelector(capSel), img = box.querySelector(plotSel);
            return !!cap && !!img && cap.textContent.includes(text)
                   && (oldSrc === null || img.src !== oldSrc) && img.complete && img.naturalWidth > 0;
        }""",
        arg=[box.element_handle(), text, old_src, CAPTION, PLOT], timeout=timeout * 1000, polling="raf")


def upload_file(box, path):
    """Click the browser's upload button and choose `path` in the file chooser it opens (as a person would)."""
    button = box.locator(UPLOAD_BUTTON)
    button.scroll_into_view_if_needed()
    with box.page.expect_file_chooser() as chooser:
        button.click()
    chooser.value.set_files(str(path))
