"""The dataset pane's filter in the real console: it holds the keys only while a filter is being
edited (so p, c, e, q and the pane digits reach the app), and an empty result says "0 of N match"."""

from __future__ import annotations

import re

import pytest

from core.events import Command, RunState, StateChanged
from core.telemetry import HostSnapshot, Telemetry
from core.webvision import ClassStats, DatasetSummary, QueryStats
from wvtui.app import TrainingApp
from wvtui.messages import TrainerEvent
from wvtui.widgets.dataset_pane import FilterInput
from wvtui.widgets.filter_table import FilterTable
from helpers import asyncio_test, pilot_until as until, screen_lines

TIMEOUT = 30.0
FIXED_TELEMETRY = Telemetry(time=0.0, gpus=(), gpu_unavailable_reason="no NVIDIA GPU found",
                            host=HostSnapshot(None, None, None, None, None, None, None))


class Index:
    """30 classes and 60 queries; the summary has full WebVision's (wide) figures."""

    def __init__(self) -> None:
        self.classes = [ClassStats(label=i, wnid=f"n{i:08d}", name=f"class number {i}", train_images=2000 - i,
                                   val_images=50, queries=2) for i in range(30)]
        self.queries = [QueryStats(query_id=f"q{q + 1:04d}", source="google", text=f"query text {q}", label=q % 30,
                                   class_name=f"class number {q % 30}", images=1000 + q) for q in range(60)]
        self.root = "/data"
        self.class_names = [c.name for c in self.classes]
        self.query_ids = [q.query_id for q in self.queries]

    def class_stats(self):
        return self.classes

    def query_stats(self):
        return self.queries

    def summary(self):
        return DatasetSummary(root="/data", num_classes=1000, sources=("google", "flickr"), train_images=2_439_574,
                              val_images=50_000, queries=2_446, min_per_class=362, mean_per_class=2439.6,
                              max_per_class=10_000, min_class=999, max_class=0, imbalance=10_000 / 362)


class StubTrainer:
    """Records what the console submits; nothing runs."""

    def __init__(self) -> None:
        self.submitted: list[Command] = []

    def submit(self, command, **kwargs) -> None:
        self.submitted.append(command)


def make_app() -> tuple[TrainingApp, StubTrainer]:
    trainer = StubTrainer()
    return TrainingApp(trainer=trainer, index=Index(), telemetry=FIXED_TELEMETRY), trainer


async def running(pilot) -> None:
    pilot.app.post_message(TrainerEvent(StateChanged(state=RunState.RUNNING, epoch=1, step=0,
                                                     previous=RunState.STARTING)))
    await until(pilot, lambda: pilot.app.run_state is RunState.RUNNING, "the running state")


def count_text(app) -> str:
    return str(app.query_one("#filter-count").render())


def assert_legible_at_80x24(lines: list[str]) -> None:
    text = "\n".join(lines)
    for figure in ("2,439,574 train / 50,000 val images", "1,000 classes", "2,446 queries",
                   "per class min/mean/max 362/2,440/10,000", "imbalance 27.6x",
                   "/ filter classes and queries by text"):
        assert figure in text, figure
    header = next(line for line in lines if "wnid" in line)
    for column in ("label", "name", "train", "val", "queries", "Acc@1"):
        assert column in header
    assert any(re.search(r"\b0\s+n00000000\s+class number 0\s+2,000\s+50\s+2\s+--", line) for line in lines)
    for line in lines:
        assert not re.search(r"\d…|…\d", line), f"a number cut short: {line!r}"


@asyncio_test
async def test_legible_at_80x24_enter_gives_the_keys_back_and_an_empty_result_says_0_of_n():
    app, trainer = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("4")
        await until(pilot, lambda: not app.dataset_pane.dirty, "the pane drawn")
        await pilot.pause()
        assert_legible_at_80x24(screen_lines(app))
        filter_input = app.query_one("#dataset-filter", FilterInput)
        classes = app.query_one("#class-table", FilterTable)

        # While editing, every printable key is text: command letters and digits too.
        await pilot.press("slash", *"r 2p")
        assert app.tabs.active == "dataset" and app.focused is filter_input
        assert filter_input.value == "r 2p" and trainer.submitted == []
        await until(pilot, lambda: count_text(app) == "0 of 30 match", "0 of 30 match")
        assert classes.row_count == 0
        await pilot.pause()
        lines = screen_lines(app)
        assert any("r 2p" in line and line.rstrip().endswith("0 of 30 match") for line in lines), lines

        # enter ends the edit (and filters at once, no debounce): p and c reach the app, a digit
        # switches panes.
        await pilot.press("backspace", "enter")
        assert app.focused is not filter_input and not filter_input.can_focus
        assert classes.filter_text == "r 2" and classes.row_count == 11  # "number 2", "number 20".."29"
        assert count_text(app) == "11 of 30 match"
        await pilot.press("p", "c", "1")
        assert trainer.submitted == [Command.PAUSE, Command.CHECKPOINT]
        assert app.tabs.active == "training"


@pytest.mark.slow  # about 30 keys through Pilot: several seconds on a busy machine
@asyncio_test
async def test_esc_tab_and_leaving_the_pane_never_leave_the_filter_holding_the_keys():
    app, trainer = make_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await running(pilot)
        filter_input = app.query_one("#dataset-filter", FilterInput)
        queries = app.query_one("#query-table", FilterTable)

        # The other table counts its own rows.
        await pilot.press("slash", *"r 2", "enter", "v")
        await until(pilot, lambda: count_text(app) == "22 of 60 match", "the queries' count")

        # esc ends an edit too; "/" selects the old text, so typing replaces it.
        await pilot.press("slash", *"r 29", "escape", "1")
        assert app.tabs.active == "training"
        assert app.focused is not filter_input and not filter_input.can_focus
        assert filter_input.value == "r 29"
        await pilot.press("e")
        assert trainer.submitted[-1] is Command.EVALUATE

        # Tab never lands in the filter box.
        await pilot.press("4")
        for _ in range(4):
            await pilot.press("tab")
            assert app.focused is not filter_input
        await pilot.press("c")
        assert trainer.submitted[-1] is Command.CHECKPOINT

        # Leaving the pane while editing (here a switch from code, as a click on a tab does)
        # gives the keys back.
        await pilot.press("slash")
        assert app.focused is filter_input
        app.tabs.active = "log"
        await until(pilot, lambda: app.focused is not filter_input, "the focus to leave the hidden filter")
        await pilot.press("2")
        assert app.tabs.active == "accuracy"

        # A click in the box edits; cleared, there is no count and every row is back.
        await pilot.press("4")
        await pilot.click("#dataset-filter")
        assert app.focused is filter_input
        filter_input.value = ""
        await pilot.press("enter")
        assert count_text(app) == "" and queries.row_count == 60
        await pilot.press("p")
        assert trainer.submitted[-1] is Command.PAUSE
