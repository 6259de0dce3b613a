"""Progress of long work: a bar on a terminal; with output to a file or a pipe (a batch job, ``nohup``, CI), a
plain line whenever a run finishes and at least once a minute while rounds go on, so a log shows where the work is.
Both say how long the rest will take at the recent pace of this process (:meth:`GridProgress.time_left`; a resumed
grid's earlier units do not count towards the pace)."""

from __future__ import annotations

import sys
import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

#: Seconds between two lines of a non-terminal log when only rounds moved on.
LINE_EVERY = 60.0
#: No time left is told before this process has worked this long and done this many units (and this share of its
#: units): a grid's first units (baselines, first rounds from scratch) are slower than the rest and finish in bursts
#: of parallel workers, so a pace taken from them is wrong by hours.
MIN_SECONDS, MIN_UNITS, MIN_SHARE = 60.0, 3, 0.05
#: Said instead of the time left until then.
ESTIMATING = "time left: estimating…"


def elapsed(seconds: float) -> str:
    """``5m 03s``, ``1h 02m``: a duration as a person reads it."""
    s = int(round(seconds))
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60:02d}m"


class GridProgress:
    """A grid's progress in units (baselines plus rounds of the runs) and in finished tasks (baselines, runs)."""

    def __init__(self, total_units: int, total_tasks: int, enabled: bool = True, stream=None,
                 label: str = "grid (baselines + rounds)", clock=time.monotonic) -> None:
        self.total_units, self.total_tasks, self.enabled = total_units, total_tasks, enabled
        self.stream = stream if stream is not None else sys.stdout
        self.label = label
        self.terminal = enabled and self.stream.isatty()
        self._bar: Progress | None = None
        self._last: tuple[int, int] | None = None
        self._last_line = 0.0
        self.clock = clock
        self._start = clock()
        self._first_units: int | None = None  # the units already done when this process first reported
        self._done_at: list[tuple[float, int]] = []  # (seconds, units) whenever the units moved on

    def __enter__(self) -> GridProgress:
        if self.terminal:
            self._bar = Progress(TextColumn(self.label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[left]}"))
            self._bar.__enter__()
            self._task = self._bar.add_task("grid", total=self.total_units, left="")
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def update(self, units: int, finished: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        if self._first_units is None:
            self._first_units = units
        if not self._done_at or units != self._done_at[-1][1]:
            self._done_at.append((now - self._start, units))
        if self._bar is not None:
            self._bar.update(self._task, completed=units, left=self.left_text(units, now - self._start))
            return
        first = self._last is None
        moved = first or finished != self._last[1] or (units != self._last[0] and now - self._last_line >= LINE_EVERY)
        if moved:
            print(self.line(units, finished, now - self._start), file=self.stream, flush=True)
            self._last, self._last_line = (units, finished), now

    def time_left(self, units: int, seconds: float) -> float | None:
        """Seconds the remaining units take at this process's recent pace: the units of the later half of the work
        it has done over the time they took (from the last moment at most half of it was done until now), so the
        slow first units stop counting as the grid goes on. None (not known yet) until this process has worked
        ``MIN_SECONDS`` and done ``MIN_UNITS`` units and ``MIN_SHARE`` of the units it has to do."""
        if units >= self.total_units:
            return 0.0
        first = self._first_units if self._first_units is not None else units
        done = units - first
        if seconds < MIN_SECONDS or done < max(MIN_UNITS, MIN_SHARE * (self.total_units - first)):
            return None
        half = first + done / 2
        since, at = [(t, u) for t, u in self._done_at if u <= half][-1]  # the first report has u = first <= half
        return (self.total_units - units) * (seconds - since) / (units - at)

    def left_text(self, units: int, seconds: float) -> str:
        left = self.time_left(units, seconds)
        return ESTIMATING if left is None else f"≈ {elapsed(left)} left"

    def line(self, units: int, finished: int, seconds: float) -> str:
        share = units / self.total_units if self.total_units else 1.0
        return (f"{self.label}: {finished}/{self.total_tasks} finished, {units}/{self.total_units} units "
                f"({share:.0%}), {elapsed(seconds)} elapsed, {self.left_text(units, seconds)}")
