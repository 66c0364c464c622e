"""What a person sees while a stage trains: one live line fed by rank 0 only.

Rank 0 of the Train loop pushes ``(step, loss, samples/s)`` to a ``ProgressBoard`` actor after each
step (fire-and-forget; the other ranks push nothing, so nothing shows twice). The driver polls the
board from a thread: on a terminal it redraws one tqdm bar (step/total, loss, samples/s, ETA);
otherwise (a log file, a pipe, CI) it prints one line every ``every_s`` seconds and at the end.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, TextIO


@dataclass
class Progress:
    """The board's state: where the stage stands, as rank 0 last reported it."""

    step: int            # optimizer steps done, counted from 0 across resumes
    total: int           # max_steps
    first_step: int      # the step this run started (or resumed) at
    loss: float          # rank 0's mean loss since the last logged step
    samples_per_s: float
    elapsed_s: float     # since the run's first step began, on the board's clock

    @property
    def eta_s(self) -> Optional[float]:
        done = self.step - self.first_step
        return None if done <= 0 else (self.total - self.step) * self.elapsed_s / done


def format_duration(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def progress_line(label: str, p: Optional[Progress]) -> str:
    """``train t2i: step 120/600 (20%) · loss 0.1530 · 41.2 samples/s · ETA 2:05``."""
    if p is None:
        return f"{label}: starting workers"
    percent = 100 * p.step // max(1, p.total)
    return (f"{label}: step {p.step}/{p.total} ({percent}%) · loss {p.loss:.4f} · "
            f"{p.samples_per_s:.1f} samples/s · ETA {format_duration(p.eta_s)}")


class ProgressBoard:
    """Ray actor (``ray.remote(ProgressBoard)``) holding the latest report of rank 0."""

    def __init__(self):
        self._state: Optional[Progress] = None
        self._started = 0.0

    def start(self, step: int, total: int) -> None:
        self._started = time.monotonic()
        self._state = None
        self._first, self._total = step, total

    def update(self, step: int, loss: float, samples_per_s: float) -> None:
        self._state = Progress(step, self._total, self._first, loss, samples_per_s,
                               time.monotonic() - self._started)

    def read(self) -> Optional[Progress]:
        return self._state


class ProgressDisplay:
    """Driver side: a thread that polls ``read()`` and shows it (a bar on a TTY, else periodic lines).

        with ProgressDisplay("train t2i", read=lambda: ray.get(board.read.remote())):
            trainer.fit()
    """

    def __init__(self, label: str, read: Callable[[], Optional[Progress]], stream: TextIO | None = None,
                 every_s: float = 30.0, poll_s: float = 0.5, tty: Optional[bool] = None):
        self.label, self.read, self.every_s, self.poll_s = label, read, every_s, poll_s
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="codiray-progress", daemon=True)
        self._bar = None
        self._last: Optional[Progress] = None
        self._printed: Optional[Progress] = None

    def __enter__(self) -> "ProgressDisplay":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._poll()
        if self.tty:
            self._draw_bar()  # the final state, not the last one a poll happened to catch
        if self._bar is not None:
            self._bar.close()
        elif self._last is not None and self._last != self._printed:
            self._print_line()

    def _print_line(self) -> None:
        print(progress_line(self.label, self._last), file=self.stream, flush=True)
        self._printed = self._last

    def _poll(self) -> None:
        try:
            state = self.read()
        except Exception:  # a board not reachable yet or any more: keep the last state shown
            return
        if state is not None:
            self._last = state

    def _run(self) -> None:
        printed_at = time.monotonic()
        while not self._stop.wait(self.poll_s):
            self._poll()
            if self.tty:
                self._draw_bar()
            elif (self._last is not None and self._last != self._printed
                  and time.monotonic() - printed_at >= self.every_s):
                self._print_line()
                printed_at = time.monotonic()

    def _draw_bar(self) -> None:
        from tqdm import tqdm

        state = self._last
        if state is None:
            return
        if self._bar is None:
            # a terminal that reports no size (0x0, e.g. a pty under `script`) would get an empty bar
            size = shutil.get_terminal_size((100, 20))
            self._bar = tqdm(total=state.total, initial=state.first_step, desc=self.label, unit="step",
                             file=self.stream, ncols=size.columns, nrows=size.lines, leave=True)
        self._bar.set_postfix_str(f"loss {state.loss:.4f} · {state.samples_per_s:.1f} samples/s", refresh=False)
        self._bar.update(state.step - self._bar.n)
