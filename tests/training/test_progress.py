"""The driver's training progress display (no Ray): the line's figures, a periodic line off a
terminal, one redrawn bar on one, and a single copy of each report."""

from __future__ import annotations

import io
import time

import pytest

from training.progress import Progress, ProgressBoard, ProgressDisplay, format_duration, progress_line


def test_the_line_shows_step_total_loss_rate_and_eta():
    # resumed at step 100, 50 steps in 25 s -> 0.5 s/step, 450 steps left -> 225 s
    p = Progress(step=150, total=600, first_step=100, loss=0.12345, samples_per_s=41.25, elapsed_s=25.0)
    assert p.eta_s == pytest.approx(225.0)
    assert progress_line("train t2i", p) == "train t2i: step 150/600 (25%) · loss 0.1235 · 41.2 samples/s · ETA 3:45"
    assert format_duration(3 * 3600 + 62) == "3:01:02" and format_duration(None) == "?"
    assert Progress(100, 600, 100, 1.0, 0.0, 0.0).eta_s is None  # no step yet: no rate, no made-up ETA
    assert progress_line("train t2i", None) == "train t2i: starting workers"


def test_board_keeps_the_latest_report_and_times_from_start():
    board = ProgressBoard()
    assert board.read() is None
    board.start(step=4, total=10)
    board.update(5, 0.5, 10.0)
    board.update(6, 0.4, 12.0)
    state = board.read()
    assert (state.step, state.total, state.first_step, state.loss, state.samples_per_s) == (6, 10, 4, 0.4, 12.0)
    assert state.elapsed_s >= 0


class Feed:
    """A reader returning the given states one poll after another, then the last one."""

    def __init__(self, states):
        self.states = list(states)

    def __call__(self):
        return self.states.pop(0) if len(self.states) > 1 else self.states[0]

    def wait_drained(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.states) > 1:
            assert time.monotonic() < deadline, "the display stopped polling"
            time.sleep(0.01)


def test_off_a_terminal_it_prints_one_line_per_period_and_the_final_state_once():
    out = io.StringIO()
    states = [None] + [Progress(s, 8, 0, 1.0 / s, 10.0, s * 0.1) for s in range(1, 9)]
    read = Feed(states)
    with ProgressDisplay("train x", read=read, stream=out, every_s=0.05, poll_s=0.01, tty=False):
        read.wait_drained()
        time.sleep(0.3)  # six more periods of an unchanged state: nothing new to print
    lines = out.getvalue().splitlines()
    assert lines and all(line.startswith("train x: step ") for line in lines)
    assert lines[-1].startswith("train x: step 8/8 (100%)")
    assert len(lines) == len(set(lines)), "a state is never printed twice"
    assert len(lines) <= 9


def test_on_a_terminal_it_redraws_one_bar():
    out = io.StringIO()
    states = [Progress(s, 8, 0, 0.5, 10.0, s * 0.1) for s in range(1, 9)]
    read = Feed(states)
    with ProgressDisplay("train x", read=read, stream=out, poll_s=0.01, tty=True):
        read.wait_drained()
    text = out.getvalue()
    assert "\n" not in text.rstrip("\n"), "a bar redraws in place with carriage returns, not new lines"
    assert "8/8" in text and "loss 0.5000" in text and "10.0 samples/s" in text
