"""Notebook 04's weight browsers and notebook 06's face browser work for a person: JupyterLab and Voila,
in a real (headless) browser.

Each test serves a temporary copy of the notebook on 127.0.0.1, runs it, moves the unit slider and the
epoch slider (notebook 04) or the face slider (notebook 06) with the keyboard and with the mouse, and
checks that the caption and the figure changed to the new unit, epoch or face. These are the failures
nothing else catches: a widget shown as text (IntSlider(value=0)) and a plot that does not redraw.
Screenshots of each browser, before and after, go to a temporary folder whose path is printed
(pytest -m browser -s shows it).
Without /usr/bin/chromium the tests skip, unless FACEAGE_REQUIRE_BROWSER=1 (CI sets it): then they fail.
Notebooks 06 and 08 run in grading mode (FACEAGE_GRADING=1: 2,000 training faces, one short epoch), as
nbgrader runs them: their tests are about the sliders and the upload, not the model, and so they take
seconds of training instead of a minute. Notebook 04 trains in full: its epoch slider needs all its snapshots.
"""
import contextlib
import hashlib
import os

import pytest

import browser_support as bs
import faceage_helpers as fh

pytestmark = pytest.mark.browser
NOTEBOOK_06 = bs.REPO / "notebooks" / "06_which_pixels_matter.ipynb"


@pytest.fixture
def page():
    """A fresh headless Chromium page, or a skip (a failure under FACEAGE_REQUIRE_BROWSER=1)."""
    reason = bs.missing_browser_reason()
    if reason:
        if os.environ.get("FACEAGE_REQUIRE_BROWSER") == "1":
            pytest.fail(f"FACEAGE_REQUIRE_BROWSER=1, but {reason}", pytrace=False)
        pytest.skip(reason)
    with bs.chromium() as page:
        yield page


def committed(path):
    """The notebook at path and the data it trains on; afterwards, proof that the committed file was not touched."""
    assert path.exists(), f"{path} is missing"
    fh.find_data()  # no data.zip: fail now with the module's explanation, not after minutes in the browser
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    yield path
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, \
        "the committed notebook changed: the servers must only ever see a copy"


@pytest.fixture
def notebook():
    """Notebook 04 (the unit and epoch browsers)."""
    yield from committed(bs.NOTEBOOK)


@pytest.fixture
def grading_mode(monkeypatch):
    """FACEAGE_GRADING=1 for the servers' kernels (server_env copies this environment)."""
    monkeypatch.setenv(fh.GRADING_ENV, "1")


@pytest.fixture
def notebook_06(grading_mode):
    """Notebook 06 (the face browser), in grading mode."""
    yield from committed(NOTEBOOK_06)


@pytest.fixture
def screens(tmp_path):
    folder = tmp_path / "screens"
    folder.mkdir()
    return folder


@contextlib.contextmanager
def explained(page, server, screens):
    """Turn any failure in the browser into one message: what went wrong, a screenshot, the server's log."""
    try:
        yield
        return
    except Exception as e:  # Playwright's timeouts, NotebookError, our assertions
        error = e
    shot, shown = screens / f"{server.kind}_failure.png", "(page unreadable)"
    with contextlib.suppress(Exception):
        page.screenshot(path=shot)
        shown = " ".join(page.inner_text("body").split())[:300]  # e.g. Voila's "Executing 3 of 30"
    message = f"{type(error).__name__}: {error}\nthe page shows: {shown}\nscreenshot: {shot}\n{server.log_tail()}"
    raise pytest.fail.Exception(message, pytrace=False) from None  # the message says it all


def move_and_check(box, name, gesture):
    """Move one slider with `gesture`, then check the caption names the new value and the image changed."""
    before = bs.state(box)
    upper_half = before["value"] > (before["min"] + before["max"]) / 2
    fraction = 0.25 if upper_half else 0.75  # far enough from where the handle is now
    if gesture == "keyboard":
        bs.press_key(box, "ArrowLeft" if before["value"] == before["max"] else "ArrowRight")
    elif gesture == "mouse drag":
        bs.drag_to(box, fraction)
    else:
        bs.click_track_at(box, fraction)
    after = bs.state(box)
    value, span = after["value"], before["max"] - before["min"]
    assert value != before["value"], f"{gesture} did not move the {name} slider (still {value})"
    if gesture != "keyboard":
        aimed = before["min"] + fraction * span
        assert abs(value - aimed) <= 0.25 * span, f"{gesture} to {fraction:.0%} of the track gave {name} {value}"
    try:
        bs.wait_for_redraw(box, name, value, before["src"], timeout=30)
    except Exception:
        now = bs.state(box)
        raise AssertionError(
            f"after {gesture} to {name} {value}, the caption says {now['caption']!r} (should start with "
            f"'{name} {value}') and the image {'changed' if now['src'] != before['src'] else 'did not change'}"
        ) from None
    return value


def check_weight_browsers(page, server, screens,
                          sliders=(("unit", "mouse drag"), ("epoch", "mouse click on the track"))):
    """Each slider, keyboard then mouse; screenshots of each browser before and after."""
    for name, mouse in sliders:
        box = bs.weight_browser(page, name)
        box.scroll_into_view_if_needed()
        box.screenshot(path=screens / f"{server.kind}_{name}_before.png")
        first = move_and_check(box, name, "keyboard")
        second = move_and_check(box, name, mouse)
        box.screenshot(path=screens / f"{server.kind}_{name}_after.png")
        print(f"{server.kind}: {name} slider moved to {first} (keyboard), then {second} ({mouse})")
    print(f"screenshots: {screens}")


def assert_stopped(server):
    """The server and the kernel it started are gone once the test is done with them."""
    assert server.process.returncode is not None, f"{server.kind} is still running"
    assert server.descendants, f"{server.kind} started no kernel?"
    assert not server.leftovers(), f"{server.kind} left processes running: {server.leftovers()}"


def test_sliders_redraw_in_jupyterlab(page, notebook, screens, tmp_path):
    with bs.serve("lab", tmp_path / "served", notebook=notebook) as server, explained(page, server, screens):
        bs.open_in_lab(page, server)
        check_weight_browsers(page, server, screens)
    assert_stopped(server)


def test_sliders_redraw_in_voila_dashboard(page, notebook, screens, tmp_path):
    with bs.serve("voila", tmp_path / "served", notebook=notebook) as server, explained(page, server, screens):
        bs.open_in_voila(page, server)
        check_weight_browsers(page, server, screens)
    assert_stopped(server)


def test_face_slider_redraws_in_jupyterlab(page, notebook_06, screens, tmp_path):
    with bs.serve("lab", tmp_path / "served", notebook=notebook_06) as server, explained(page, server, screens):
        bs.open_in_lab(page, server, names=("face",))
        check_weight_browsers(page, server, screens, sliders=(("face", "mouse drag"),))
    assert_stopped(server)


def test_face_slider_redraws_in_voila_dashboard(page, notebook_06, screens, tmp_path):
    with bs.serve("voila", tmp_path / "served", notebook=notebook_06) as server, explained(page, server, screens):
        bs.open_in_voila(page, server, names=("face",))
        check_weight_browsers(page, server, screens, sliders=(("face", "mouse click on the track"),))
    assert_stopped(server)


# --- notebook 08: the own-face browser, with an upload -------------------------------------------

CAPTION_08 = {"centre x": "centre x {},", "centre y": ", y {},", "size": "size {} px", "angle": "angle {:+d}°"}


@pytest.fixture
def notebook_08(grading_mode):
    """Notebook 08 (the own-face browser), in grading mode."""
    yield from committed(bs.NOTEBOOK_08)


@pytest.fixture
def photos(tmp_path):
    """The notebook's public-domain example photo copied under a new name, and a text file posing as a PNG."""
    from pathlib import Path

    from matplotlib.cbook import get_sample_data
    folder = tmp_path / "photos"
    folder.mkdir()
    good = folder / "grace_hopper_upload.jpg"
    good.write_bytes(Path(get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes())
    bad = folder / "not_a_photo.png"
    bad.write_text("these are not the pixels you are looking for\n")
    return good, bad


def check_own_face_browser(page, server, screens, photos):
    """Each slider moved (keyboard, then a click on its track), then a good and a bad upload."""
    box = bs.weight_browser(page, "centre x")
    box.scroll_into_view_if_needed()
    box.screenshot(path=screens / f"{server.kind}_own_face_before.png")
    for name in bs.SLIDERS_08:
        slider = bs.own_face_slider(box, name)
        for gesture in ("keyboard", "mouse click on the track"):
            before, src = bs.slider_value(slider), bs.state(box)["src"]
            if gesture == "keyboard":
                slider.locator(".noUi-handle").focus()
                page.keyboard.press("ArrowRight")
            else:
                track = slider.locator(".noUi-target").bounding_box()
                page.mouse.click(track["x"] + 0.3 * track["width"], track["y"] + track["height"] / 2)
            value = bs.slider_value(slider)
            assert value != before, f"{gesture} did not move the {name} slider (still {value})"
            try:
                bs.wait_for_caption(box, CAPTION_08[name].format(value), src)
            except Exception:
                raise AssertionError(f"after {gesture} to {name} {value}, the caption says "
                                     f"{bs.state(box)['caption']!r}") from None
        print(f"{server.kind}: {name} slider moved to {value}")
    good, bad = photos
    src = bs.state(box)["src"]
    bs.upload_file(box, good)
    bs.wait_for_caption(box, f"your photo {good.name} (512 x 600 pixels after decoding): centre x 256, y 300", src)
    assert bs.slider_value(bs.own_face_slider(box, "size")) == 256  # the crop reset for the new photo
    box.screenshot(path=screens / f"{server.kind}_own_face_uploaded.png")
    bs.upload_file(box, bad)
    bs.wait_for_caption(box, f"{bad.name} was not read: this file is not a JPEG or PNG image")
    caption = bs.state(box)["caption"]
    assert f"Still showing your photo {good.name}." in caption and "Traceback" not in caption, caption
    box.screenshot(path=screens / f"{server.kind}_own_face_refused.png")
    print(f"{server.kind}: uploaded {good.name}, then {bad.name} (refused); screenshots: {screens}")


def test_own_face_browser_crops_and_uploads_in_jupyterlab(page, notebook_08, screens, photos, tmp_path):
    bs.copy_lessons(tmp_path / "served")
    with bs.serve("lab", tmp_path / "served", notebook=notebook_08) as server, explained(page, server, screens):
        bs.open_in_lab(page, server, names=("centre x",))
        check_own_face_browser(page, server, screens, photos)
    assert_stopped(server)


def test_own_face_browser_crops_and_uploads_in_voila_dashboard(page, notebook_08, screens, photos, tmp_path):
    bs.copy_lessons(tmp_path / "served")
    with bs.serve("voila", tmp_path / "served", notebook=notebook_08) as server, explained(page, server, screens):
        bs.open_in_voila(page, server, names=("centre x",))
        check_own_face_browser(page, server, screens, photos)
    assert_stopped(server)
