"""The noise pane (key 6) from hand-made NoiseEstimate/NoiseDetails events over the synthetic tree.

The events describe the 4-class synthetic tree of conftest (2 queries a class, 8 images a
query): class 1 and query 3 ("synthetic class 1 view 1") are the planted noisiest. Images are
real JPEGs of that tree. Regenerate the snapshots with `--snapshot-update` and look at the SVGs.
"""

from __future__ import annotations

import fcntl
import math
import os
import pty
import struct
import sys
import termios
import time

import pytest
from textual_image.renderable.halfcell import Image as HalfcellRenderable
from textual_image.renderable.sixel import Image as SixelRenderable
from textual_image.renderable.tgp import Image as TGPRenderable
from textual_image.renderable.unicode import Image as UnicodeRenderable
from textual_image.widget import HalfcellImage, SixelImage, TGPImage

from core.events import NoiseDetails, NoiseEstimate
from core.telemetry import HostSnapshot, Telemetry
from core.webvision import WebVisionIndex
from wvtui.app import TrainingApp
from wvtui.eventtext import describe, plain
from wvtui.messages import TrainerEvent
from wvtui.widgets.filter_table import FilterTable
from wvtui.widgets.image_preview import image_widget_class
from wvtui.widgets.noise_charts import clean_cut
from wvtui.widgets.noise_pane import NO_INDEX, WAITING, NoisePane
from helpers import SNAPSHOT_SIZES
from helpers import asyncio_test, pilot_until as until

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# textual-image's own call, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning")

CLASS_CLEAN = (0.9, 0.4, 0.75, 0.6)
QUERY_CLEAN = (0.95, 0.85, 0.5, 0.3, 0.8, 0.7, 0.65, 0.55)  # query q is class q // 2
MEANS, VARIANCES, WEIGHTS = (0.15, 0.7), (0.006, 0.02), (0.65, 0.35)


def histogram(samples: int = 64_000, bins: int = 40) -> tuple[int, ...]:
    """Counts the mixture above predicts, so the fitted curves lie on the bars."""
    counts = []
    for i in range(bins):
        x = (i + 0.5) / bins
        density = sum(w * math.exp(-(x - m) ** 2 / (2 * v)) / math.sqrt(2 * math.pi * v)
                      for m, v, w in zip(MEANS, VARIANCES, WEIGHTS))
        counts.append(round(samples * density / bins))
    return tuple(counts)


def estimate(epoch: int, clean: float) -> NoiseEstimate:
    return NoiseEstimate(epoch=epoch, step=epoch * 20, samples=64, clean_fraction=clean, means=MEANS,
                         variances=VARIANCES, weights=WEIGHTS, path=f"runs/x/samples/epoch_{epoch:03d}.npz")


def details(index: WebVisionIndex, epoch: int = 3, worst: tuple | None = None, relative: bool = False) -> NoiseDetails:
    """As core.noise writes them: query ids are folder names, sample paths full paths."""
    train = index.train
    if worst is None:
        # Loss rises with the sample's position in its query, and with the query's noise.
        worst = tuple(
            (i, train.relpath(i) if relative else train.path(i), int(train.labels[i]),
             index.query_ids[int(train.queries[i])],
             (int(train.labels[i]) + 1) % 4 if i % 8 >= 5 else int(train.labels[i]),
             round((1 - QUERY_CLEAN[int(train.queries[i])]) * 2 + (i % 8) * 0.1, 3),
             round(1 - (i % 8) / 8, 3))
            for i in range(len(train)))
    return NoiseDetails(
        epoch=epoch, histogram=histogram(),
        classes=tuple((c, 16, CLASS_CLEAN[c], 1.0 - CLASS_CLEAN[c], (c + 1) % 4) for c in range(4)),
        queries=tuple((index.query_ids[q], index.query_texts[q], q // 2, 8, QUERY_CLEAN[q], 1.2 - QUERY_CLEAN[q],
                       -1 if q == 0 else (q // 2 + 1) % 4) for q in range(8)),
        worst=worst)


def split_events(index: WebVisionIndex, relative: bool = False) -> list:
    return [estimate(1, 0.52), estimate(2, 0.61), estimate(3, 0.64), details(index, relative=relative)]


@pytest.fixture(scope="module")
def index(synthetic_root: str) -> WebVisionIndex:
    return WebVisionIndex.load(synthetic_root, num_classes=4)


def make_app(index: WebVisionIndex | None, **kw) -> TrainingApp:
    return TrainingApp(demo=True, telemetry=FIXED, index=index, clock=lambda: 0.0, chart_interval=0.0,
                       chart_budget=None, **kw)

FIXED = Telemetry(time=0.0, gpus=(), gpu_unavailable_reason="no GPU in this test",
                  host=HostSnapshot(cpu_percent=0.0, ram_used_bytes=0, ram_total_bytes=1, process_rss_bytes=0,
                                    process_cpu_percent=0.0, workers=0, workers_rss_bytes=0))


async def shown(pilot, *events) -> NoisePane:
    """Post the events, show the pane (key 6) and wait until the frame timer has drawn it."""
    app = pilot.app
    for ev in events:
        app.post_message(TrainerEvent(ev))
    await pilot.pause()
    await pilot.press("6")
    pane = app.query_one(NoisePane)
    await until(pilot, lambda: not (pane.dirty or pane.chart_dirty), "the noise pane drawn")
    await pilot.pause()
    return pane


def summary(pane: NoisePane) -> str:
    return str(pane.query_one("#noise-summary").render())


def column(table: FilterTable, key: str) -> list:
    return [table.records[i][key] for i in table.shown]


@pytest.mark.slow  # seconds of Pilot: the fast loop keeps the image and snapshot tests
@asyncio_test
async def test_key_6_shows_the_pane_and_a_line_before_the_first_estimate(index):
    app = make_app(index)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await shown(pilot)
        assert app.tabs.active == "noise"
        assert summary(pane) == WAITING
        pane = await shown(pilot, *split_events(index))
        assert summary(pane).startswith("epoch 3: clean 64.0% of 64 samples  means 0.15 / 0.70  0.5 cut 0.")
        assert [round(ev.clean_fraction, 2) for ev in pane.estimates] == [0.52, 0.61, 0.64]


@pytest.mark.slow  # seconds of Pilot: the fast loop keeps the key, image and snapshot tests
@asyncio_test
async def test_the_pane_redraws_on_the_frame_timer_not_per_event(index):
    app = make_app(index, frame_interval=3600.0)  # one frame at mount, then none in this test
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("6")
        pane = app.query_one(NoisePane)
        for ev in split_events(index):
            app.post_message(TrainerEvent(ev))
        await pilot.pause()
        assert pane.dirty and pane.chart_dirty and len(pane.estimates) == 3
        assert summary(pane) == WAITING
        app._redraw()  # what the frame timer calls
        assert not (pane.dirty or pane.chart_dirty)
        assert summary(pane).startswith("epoch 3: clean 64.0%")


@pytest.mark.slow  # seconds of Pilot: the fast loop keeps the key, image and snapshot tests
@asyncio_test
async def test_tables_list_the_noisiest_first_and_sort_by_any_column(index):
    app = make_app(index)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await shown(pilot, *split_events(index))
        classes = pane.query_one("#noise-classes", FilterTable)
        assert column(classes, "label") == [1, 3, 2, 0]
        assert column(classes, "instead")[0] == "2 synthetic class 2"
        classes.focus()
        await pilot.press("right", "s")  # the clean % column, again: highest first
        assert classes.sort_key == "clean" and column(classes, "label") == [0, 2, 3, 1]
        await pilot.press("right", "right", "s")  # mean loss, lowest first
        assert column(classes, "label") == [0, 2, 3, 1]
        await pilot.press("v")
        queries = pane.query_one("#noise-queries", FilterTable)
        await until(pilot, lambda: queries.is_on_screen and not queries.stale, "the queries table shown")
        assert column(queries, "query") == ["q0004", "q0003", "q0008", "q0007", "q0006", "q0005", "q0002",
                                            "q0001"]
        assert column(queries, "instead")[-1] == "--"  # query 1: no class predicted instead


@pytest.mark.slow  # seconds of Pilot: the fast loop keeps the key, image and snapshot tests
@asyncio_test
async def test_selecting_a_query_lists_its_highest_loss_samples(index):
    app = make_app(index)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await shown(pilot, *split_events(index))
        # The noisiest class is selected at first: its 16 samples, highest loss first.
        assert [w[2] for w in pane.samples] == [1] * 16
        assert [w[5] for w in pane.samples] == sorted((w[5] for w in pane.samples), reverse=True)
        pane.query_one("#noise-classes").focus()
        await pilot.press("v")
        queries = pane.query_one("#noise-queries", FilterTable)
        await until(pilot, lambda: pane.samples and pane.samples[0][3] == "q0004", "query q0004's samples")
        queries.focus()
        await pilot.press("down")  # q0003 (query id 2)
        await until(pilot, lambda: pane.samples[0][3] == "q0003", "query q0003's samples")
        assert len(pane.samples) == 8 and {w[3] for w in pane.samples} == {"q0003"}
        table = pane.sample_table
        assert table.row_count == 8
        first = [str(cell) for cell in table.get_row_at(0)]
        assert first == ["google/q0003/000007.jpg", "1", "2", "1.700", "0.12"]
        assert str(pane.query_one("#preview-caption").render()).startswith(
            "google/q0003/000007.jpg: 1 synthetic class 1 -> 2 synthetic class 2")


@pytest.mark.slow  # decodes and renders a real image: the full suite
@asyncio_test
async def test_selecting_a_sample_shows_its_image_in_half_blocks(index):
    app = make_app(index)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await shown(pilot, *split_events(index))
        preview = pane.preview
        assert preview.error is None
        assert preview.path == os.path.join(index.root, "google/q0004/000007.jpg")
        # No Kitty or Sixel under run_test: the half-block renderer, in colour.
        assert type(preview.image) is HalfcellImage
        pane.sample_table.focus()
        await pilot.press("down")
        await until(pilot, lambda: preview.path.endswith("google/q0004/000006.jpg"), "the next image")
        assert os.path.isfile(preview.path) and type(preview.image) is HalfcellImage
        await pilot.pause()
        assert preview.image.size.height > 3  # it took the room below its caption


@pytest.mark.slow  # seconds of Pilot: the fast loop keeps the key, image and snapshot tests
@asyncio_test
async def test_an_unreadable_image_is_said_not_raised(index, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    worst = ((0, str(bad), 0, "q0001", 1, 3.0, 0.01), (1, "google/q0001/gone.jpg", 0, "q0001", 1, 2.0, 0.1))
    app = make_app(index)
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await shown(pilot, estimate(1, 0.5), details(index, epoch=1, worst=worst))
        pane.query_one("#noise-classes").focus()
        await pilot.press("down", "down", "down")  # class 0, the cleanest, holds the two bad samples
        await until(pilot, lambda: len(pane.samples) == 2, "class 0's samples")
        assert pane.preview.image is None and pane.preview.error.startswith("cannot read bad.jpg")
        pane.sample_table.focus()
        await pilot.press("down")
        await until(pilot, lambda: "gone.jpg" in (pane.preview.error or ""), "the missing file said")
        assert pane.preview.image is None
        assert "cannot read gone.jpg" in str(pane.query_one("#preview-caption").render())


@pytest.mark.slow  # seconds of Pilot: the fast loop keeps the key, image and snapshot tests
@asyncio_test
async def test_without_an_index_the_pane_says_why_there_is_no_image(index):
    app = make_app(None)  # a console attached to a run elsewhere: no dataset root here
    async with app.run_test(size=(120, 40)) as pilot:
        pane = await shown(pilot, *split_events(index, relative=True))
        assert pane.preview.image is None and pane.preview.error == NO_INDEX
        assert column(pane.query_one("#noise-classes", FilterTable), "instead")[0] == "2"  # label numbers


def test_the_image_widget_follows_what_the_terminal_supports():
    assert image_widget_class(SixelRenderable) is SixelImage
    assert image_widget_class(TGPRenderable) is TGPImage
    assert image_widget_class(HalfcellRenderable) is HalfcellImage
    # Not a terminal at all: half-blocks rather than textual-image's grey shades.
    assert image_widget_class(UnicodeRenderable) is HalfcellImage
    assert image_widget_class(SixelRenderable, headless=True) is HalfcellImage


@pytest.mark.parametrize("rows, cols", [(0, 0), (24, 80)], ids=["no-size", "24x80"])
def test_a_plain_terminal_gets_half_blocks(rows, cols):
    """A real pty whose terminal answers no query (SSH to a plain terminal): textual-image's
    probes time out and the preview uses half-blocks. A fresh pty has no size (0 x 0), which
    textual-image's own probe divides by."""
    code = ("from wvtui.widgets.image_preview import DetectedRenderable, image_widget_class;"
            "print('chosen', DetectedRenderable.__module__, image_widget_class().__name__)")
    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.execv(sys.executable, [sys.executable, "-c", code])
    out = b""
    deadline = time.monotonic() + 60
    while b"\n" not in out.partition(b"chosen")[2] and time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out
    line = out.partition(b"chosen")[2].decode().split()
    assert line == ["textual_image.renderable.halfcell", "HalfcellImage"], out


def test_the_clean_cut_is_where_the_posterior_crosses_one_half():
    assert clean_cut((0.2, 0.6), (0.01, 0.01), (0.5, 0.5)) == pytest.approx(0.4, abs=1e-3)
    # A heavier clean component pushes the cut towards the noisy mean: w0 N0 = w1 N1 at
    # x = 0.4 + v ln(w0/w1) / (m1 - m0).
    assert clean_cut((0.2, 0.6), (0.01, 0.01), (0.8, 0.2)) == pytest.approx(0.4 + 0.01 * math.log(4) / 0.4, abs=1e-3)
    # The noisy component dominates everywhere in [0, 1]: no cut.
    assert clean_cut((0.2, 0.6), (0.01, 0.5), (1e-9, 1.0)) is None


def test_the_log_line_of_an_estimate():
    ev = NoiseEstimate(epoch=5, step=100, samples=66_000, clean_fraction=0.712, means=(0.1234, 0.5799),
                       variances=(0.01, 0.02), weights=(0.7, 0.3), path="x")
    assert [plain(line) for line in describe(ev)] == [
        "Noise (epoch 5): clean 71.2% of 66,000 samples; means 0.12 / 0.58"]
    assert describe(NoiseDetails(epoch=4, histogram=(), classes=(), queries=(), worst=())) == []


def snapshot_run(index):
    async def _run(pilot) -> None:
        await shown(pilot, *split_events(index))
        pilot.app.clear_notifications()
        await pilot.pause()

    return _run


@pytest.mark.slow  # the full suite compares it; the fast loop drives the pane in its own tests
@pytest.mark.parametrize("size", SNAPSHOT_SIZES)
def test_noise_pane_snapshot(snap_compare, index, size):
    assert snap_compare(make_app(index), terminal_size=size, run_before=snapshot_run(index))
