"""How long notebook 04 takes to redraw after a slider move, in a real browser (aim: under 300 ms).

Serves a temporary copy of notebook 04 with Voila (what a teacher projects; --server lab for
JupyterLab) on 127.0.0.1, opens it in headless Chromium, then moves one slider a step with the
keyboard, --moves times. Each sample is the time from the key press until the caption names the new
unit (or epoch) and the new figure has loaded in the page: the kernel's redraw plus the round trips.
Prints every sample and the median. Uses the browser tests' helpers (tests/browser_support.py).

    FACEAGE_DATA=/path/to/data.zip .venv/bin/python benchmarks/bench_slider.py [--server lab] [--slider epoch]
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import browser_support as bs  # noqa: E402  (after the path to tests/)


def time_moves(box, name, moves):
    """Press an arrow key `moves` times on the slider; return the seconds each redraw took."""
    bs.focus_slider(box)
    samples = []
    for _ in range(moves):
        before = bs.state(box)
        key = "ArrowLeft" if before["value"] == before["max"] else "ArrowRight"
        t0 = time.perf_counter()
        box.page.keyboard.press(key)
        value = bs.state(box)["value"]  # the slider moves at once in the page; the redraw follows
        bs.wait_for_redraw(box, name, value, before["src"])
        samples.append(time.perf_counter() - t0)
    return samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=["voila", "lab"], default="voila")
    parser.add_argument("--slider", choices=["unit", "epoch"], default="unit")
    parser.add_argument("--moves", type=int, default=10)
    args = parser.parse_args(argv)
    reason = bs.missing_browser_reason()
    if reason:
        sys.exit(f"bench_slider: {reason}")

    with tempfile.TemporaryDirectory(prefix="faceage_bench_") as workdir, bs.chromium() as page, \
            bs.serve(args.server, workdir) as server:
        t0 = time.perf_counter()
        try:
            (bs.open_in_voila if args.server == "voila" else bs.open_in_lab)(page, server)
        except Exception as e:
            sys.exit(f"bench_slider: notebook 04 did not show its browsers: {e}\n{server.log_tail()}")
        print(f"{args.server}: notebook 04 ran and showed its browsers in {time.perf_counter() - t0:.0f} s")
        samples = time_moves(bs.weight_browser(page, args.slider), args.slider, args.moves)

    ms = [1000 * s for s in samples]
    print(f"{args.slider} slider, {len(ms)} keyboard moves, redraw time in the browser (ms): "
          + " ".join(f"{m:.0f}" for m in ms))
    median = statistics.median(ms)
    print(f"median {median:.0f} ms (aim: under 300 ms) {'OK' if median < 300 else 'SLOW'}")


if __name__ == "__main__":
    main()
