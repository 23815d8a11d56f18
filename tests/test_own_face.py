"""Notebook 08's own-face helpers: fh.crop_face, fh.decode_photo and fh.own_face_browser.

The crop's geometry is checked on synthetic images whose answer is known without the code under test
(a random image, a disc, a dot); every kind of bad upload must give a one-line PhotoError, and in the
browser a clear caption with the photo kept; the browser is driven as a Python object
(tests/test_browser.py drives it in JupyterLab and Voila, with a real upload).
No photo file is committed: the tests make their images in memory.
"""
import datetime
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

import faceage_helpers as fh
from fakes import fake_faces


def encoded(pixels, fmt="PNG", **options):
    """An image file's bytes, made in memory."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **options)
    return buf.getvalue()


def png_header_only(width, height):
    """A PNG that declares width x height 8-bit gray pixels but holds none: decoding it could only fail."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


def centroid(face, threshold=128):
    """(x, y) of the bright pixels' centre, pixel i at i + 0.5 as in crop_face's coordinates."""
    rows, cols = np.nonzero(face > threshold)
    return cols.mean() + 0.5, rows.mean() + 0.5


def dot_image(x, y, shape=(400, 400), sigma=3.0):
    """A dark image with a bright Gaussian dot centred at (x, y) (pixel centres at i + 0.5)."""
    rows, cols = np.mgrid[:shape[0], :shape[1]] + 0.5
    return np.round(255 * np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma ** 2))).astype(np.uint8)


# --- fh.crop_face -------------------------------------------------------------------------------

def test_the_crop_of_a_48x48_face_at_its_middle_is_the_face_itself_uint8_or_float():
    face = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    for image in (face, face / 255):
        out = fh.crop_face(image, (24, 24), 48)
        assert out.dtype == np.uint8 and out.shape == (48, 48)
        np.testing.assert_array_equal(out, face)


def test_moving_the_centre_shifts_the_face_and_repeats_the_border():
    face = np.random.default_rng(1).integers(0, 256, (48, 48), dtype=np.uint8)
    out = fh.crop_face(face, (27, 24), 48)  # the crop 3 pixels to the right: the face moves 3 to the left
    np.testing.assert_array_equal(out[:, :45], face[:, 3:])
    np.testing.assert_array_equal(out[:, 45:], np.repeat(face[:, -1:], 3, axis=1))
    out = fh.crop_face(face, (24, 20), 48)  # 4 pixels up: the face moves 4 down, its top row repeated
    np.testing.assert_array_equal(out[4:], face[:-4])
    np.testing.assert_array_equal(out[:4], np.repeat(face[:1], 4, axis=0))
    flat = np.full((30, 50), 77, np.uint8)
    np.testing.assert_array_equal(fh.crop_face(flat, (-40, 90), 20, angle=7), 77)  # wholly outside: the border


def test_the_size_scales_the_face_to_48_pixels():
    rows, cols = np.mgrid[:400, :400] + 0.5
    disc = np.where((cols - 210) ** 2 + (rows - 180) ** 2 <= 50 ** 2, 255, 0).astype(np.uint8)  # radius 50
    for size, radius in ((200, 12), (120, 20)):  # 50 px of the photo become 50 * 48 / size pixels
        out = fh.crop_face(disc, (210, 180), size)
        assert np.isclose(np.sum(out > 128), np.pi * radius ** 2, rtol=0.06), size
        assert np.allclose(centroid(out), (24, 24), atol=0.1), size


@pytest.mark.parametrize("angle", [0, 30, -90, 15])
def test_a_positive_angle_turns_the_crop_counter_clockwise_on_the_photo(angle):
    # A dot 60 px right of and 20 px above the crop's centre (x right, y down). Seen from a crop turned by
    # `angle` counter-clockwise, it has turned clockwise by `angle` on screen (y down): (u, v) -> R (u, v).
    u, v, size = 60.0, -20.0, 240
    image = dot_image(200 + u, 200 + v)
    t = np.deg2rad(angle)
    expected = (24 + (u * np.cos(t) - v * np.sin(t)) * 48 / size, 24 + (u * np.sin(t) + v * np.cos(t)) * 48 / size)
    out = fh.crop_face(image, (200, 200), size, angle=angle)
    assert np.allclose(centroid(out, threshold=40), expected, atol=0.25), (centroid(out, 40), expected)


def test_a_quarter_turn_is_numpys_clockwise_rot90():
    face = np.random.default_rng(2).integers(0, 256, (48, 48), dtype=np.uint8)
    np.testing.assert_array_equal(fh.crop_face(face, (24, 24), 48, angle=90), np.rot90(face, -1))


def test_crop_face_bad_arguments_get_clear_messages():
    photo = np.zeros((60, 80), np.uint8)
    with pytest.raises(ValueError, match=r"one grayscale image \(height, width\), got shape \(60, 80, 3\)"):
        fh.crop_face(np.zeros((60, 80, 3), np.uint8), (40, 30), 20)
    with pytest.raises(ValueError, match=r"uint8 pixels \(0-255\) or floats in \[0, 1\], got float64 in \[2, 2\]"):
        fh.crop_face(np.full((60, 80), 2.0), (40, 30), 20)
    with pytest.raises(ValueError, match=r"size between 1 and 320 pixels"):
        fh.crop_face(photo, (40, 30), 0)
    with pytest.raises(ValueError, match=r"centre and angle must be finite"):
        fh.crop_face(photo, (np.nan, 30), 20)


# --- fh.decode_photo ---------------------------------------------------------------------------

def test_decode_photo_reads_jpeg_and_png_as_pillows_grayscale():
    rgb = np.random.default_rng(3).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))
    np.testing.assert_array_equal(fh.decode_photo(encoded(rgb)), expected)
    jpeg = encoded(rgb, "JPEG", quality=95)
    np.testing.assert_array_equal(fh.decode_photo(jpeg), np.asarray(Image.open(io.BytesIO(jpeg)).convert("L")))
    assert fh.decode_photo(memoryview(jpeg)).shape == (40, 60)  # FileUpload hands over a memoryview


def test_decode_photo_turns_the_photo_upright_by_its_exif_orientation():
    gray = np.zeros((30, 50), np.uint8)
    gray[:5, :10] = 255  # a bright patch in the stored image's top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation 6: the camera was turned; show the stored image turned 90 degrees clockwise
    photo = fh.decode_photo(encoded(gray, exif=exif.tobytes()))
    np.testing.assert_array_equal(photo, np.rot90(gray, -1))  # upright: 50 x 30, the patch now top-right
    assert photo[:10, -5:].min() == 255


def test_decode_photo_shrinks_a_large_photo_to_1024_pixels_on_its_longer_side():
    wide = np.tile(np.arange(3000) % 256, (600, 1)).astype(np.uint8)
    assert fh.decode_photo(encoded(wide)).shape == (205, 1024)
    assert fh.decode_photo(encoded(wide), max_side=3000).shape == (600, 3000)


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white():
    ramp = np.tile(np.linspace(0, 65535, 64), (8, 1)).astype(np.uint16)
    photo = fh.decode_photo(encoded(ramp))
    np.testing.assert_array_equal(photo, np.round(ramp / 257).astype(np.uint8))
    assert photo.min() == 0 and photo.max() == 255 and np.mean(photo == 255) < 0.05


GOOD = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
BAD_UPLOADS = {  # what the student uploaded: (its bytes, what the message must say)
    "empty": (b"", "the file is empty"),
    "text": (b"name,age\nada,36\n", "not a JPEG or PNG image"),
    "gif": (encoded(GOOD[..., 0], "GIF"), "this is a GIF image, not a JPEG or PNG"),
    "huge": (png_header_only(12_000, 9_000), r"12000 x 9000 pixels \(108 megapixels\), more than the 50"),
    "bomb": (png_header_only(20_000, 20_000), "more than 50 megapixels"),  # past Pillow's own bomb limit
    "truncated jpeg": (encoded(GOOD, "JPEG")[:900], "this JPEG file ends early"),
    "truncated png": (encoded(GOOD)[:-40], "this PNG file"),
}


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_each_bad_upload_gets_a_one_line_photo_error(kind):
    raw, message = BAD_UPLOADS[kind]
    with pytest.raises(fh.PhotoError, match=message) as caught:
        fh.decode_photo(raw)
    assert "\n" not in str(caught.value) and isinstance(caught.value, ValueError)


def test_the_pixel_bound_is_checked_before_decoding():
    # A header-only PNG can be decoded by nothing: a size message (not "damaged") proves the bound came first.
    with pytest.raises(fh.PhotoError, match="megapixels"):
        fh.decode_photo(png_header_only(8_000, 7_000))
    with pytest.raises(fh.PhotoError, match="ends early|damaged"):
        fh.decode_photo(png_header_only(800, 700))


# --- fh.own_face_browser -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """A small network trained for 3 epochs on fake faces, the mean of those faces, and a fake photo."""
    pytest.importorskip("ipywidgets")
    X, ages = fake_faces(100, seed=5)
    model = fh.train(X, ages, n_hidden=6, epochs=3, batch_size=16, mirror=False, verbose=False)
    photo = np.random.default_rng(6).integers(0, 256, (120, 90), dtype=np.uint8)
    return model, X.reshape(len(X), -1).mean(axis=0) / 255, photo


def parts(box):
    upload, sliders, caption, output = box.children
    return upload, {s.description: s for s in sliders.children}, caption.value, output.outputs[0]["data"]["image/png"]


def upload_file(upload, name, raw):
    upload.value = ({"name": name, "type": "", "size": len(raw), "content": memoryview(raw),
                     "last_modified": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)},)


def test_browser_redraws_crop_prediction_and_picture_for_every_slider(trained):
    model, mean_face, photo = trained
    box = fh.own_face_browser(model, None, photo, mean_face, centre=(40, 50), size=60)
    _, sliders, caption, png = parts(box)
    assert [sliders[k].value for k in ("centre x", "centre y", "size", "angle")] == [40, 50, 60, 0]
    assert (sliders["centre x"].max, sliders["centre y"].max, sliders["angle"].min) == (90, 120, -30)
    seen = {png}
    for key, value in (("centre x", 52), ("centre y", 61), ("size", 44), ("angle", 12)):
        sliders[key].value = value
        _, _, caption, png = parts(box)
        crop = fh.crop_face(photo, (sliders["centre x"].value, sliders["centre y"].value), sliders["size"].value,
                            sliders["angle"].value)
        np.testing.assert_array_equal(box.face(), crop)
        predicted = fh.predict(model, crop[None])[0]
        assert f"centre x {sliders['centre x'].value}, y {sliders['centre y'].value}, size {sliders['size'].value} " \
               f"px, angle {sliders['angle'].value:+d}°: predicted age {predicted:.1f} y" in caption, caption
        seen.add(png)
    assert len(seen) == 5
    assert repr(box).startswith("[your-own-face browser: an upload button and four sliders")


def test_an_upload_replaces_the_photo_resets_the_crop_and_leaves_the_upload_button_empty(trained):
    model, mean_face, photo = trained
    box = fh.own_face_browser(model, None, photo, mean_face)
    upload, sliders, _, _ = parts(box)
    new = np.random.default_rng(7).integers(0, 256, (300, 200, 3), dtype=np.uint8)
    upload_file(upload, "me.png", encoded(new))
    _, _, caption, _ = parts(box)
    np.testing.assert_array_equal(box.photo, np.asarray(Image.fromarray(new).convert("L")))
    assert [sliders[k].value for k in ("centre x", "centre y", "size", "angle")] == [100, 150, 100, 0]
    assert (sliders["centre x"].max, sliders["centre y"].max) == (200, 300)
    assert caption.startswith("your photo me.png (200 x 300 pixels after decoding): centre x 100, y 150")
    assert upload.value == ()  # the file's bytes are not kept in the widget


@pytest.mark.parametrize("kind", ["text", "huge", "truncated jpeg", "gif", "empty"])
def test_a_bad_upload_shows_its_message_in_the_caption_and_keeps_the_photo(trained, kind):
    model, mean_face, photo = trained
    box = fh.own_face_browser(model, None, photo, mean_face)
    upload, sliders, _, _ = parts(box)
    raw, message = BAD_UPLOADS[kind]
    upload_file(upload, "upload.bin", raw)
    _, _, caption, _ = parts(box)
    assert caption.startswith("upload.bin was not read: ") and "Traceback" not in caption
    with pytest.raises(fh.PhotoError) as caught:
        fh.decode_photo(raw)
    assert str(caught.value) in caption.replace("&quot;", '"').replace("&#x27;", "'")
    assert "Still showing the example photo." in caption
    np.testing.assert_array_equal(box.photo, photo)
    assert upload.value == ()
    sliders["size"].value += 1  # the message was for that upload: the next redraw drops it
    assert not parts(box)[2].startswith("upload.bin")


def test_browser_bad_arguments_get_clear_messages(trained):
    model, mean_face, photo = trained
    no_map = fh.Lesson(fh.forward, fh.mse_loss, fh.backward)
    with pytest.raises(fh.LessonError, match="backward_to_input"):
        fh.own_face_browser(model, no_map, photo, mean_face)
    with pytest.raises(ValueError, match="one grayscale image"):
        fh.own_face_browser(model, None, np.zeros((10, 10, 3), np.uint8), mean_face)


def test_redraw_time_is_measured_not_asserted(trained):
    model, mean_face, _ = trained
    photo = np.random.default_rng(8).integers(0, 256, (1024, 768), dtype=np.uint8)  # a photo as large as decoded
    box = fh.own_face_browser(model, None, photo, mean_face)
    _, sliders, _, _ = parts(box)
    times = []
    for value in range(200, 230, 3):
        start = time.perf_counter()
        sliders["size"].value = value
        times.append(time.perf_counter() - start)
    print(f"own_face_browser redraw on a 768 x 1024 photo: median {np.median(times):.3f} s, "
          f"slowest {max(times):.3f} s ({len(times)} moves)")
    assert len(times) == 10
