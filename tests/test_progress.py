"""Progress of a grid in a log (output to a file or a pipe): a line per finished run, and per minute."""

from __future__ import annotations

import io

from fairal import progress
from fairal.progress import GridProgress, elapsed


def test_a_log_gets_a_line_per_finished_run_and_per_minute(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    with GridProgress(40, 4, stream=log) as bar:
        bar.update(0, 0)  # the first state is always written
        clock[0] += 10
        bar.update(3, 0)  # rounds moved on, 10 s later: no line
        bar.update(10, 1)  # a run finished: a line
        clock[0] += 30
        bar.update(12, 1)  # 30 s after the last line: none
        clock[0] += 31
        bar.update(14, 1)  # 61 s after it: a line
        bar.update(14, 1)  # nothing moved: none
    lines = log.getvalue().splitlines()
    # time left at the pace so far: 10 units in 10 s, 30 to go -> 30 s; 14 units in 71 s, 26 to go -> 131.9 s
    assert lines == ["grid (baselines + rounds): 0/4 finished, 0/40 units (0%), 0m 00s elapsed",
                     "grid (baselines + rounds): 1/4 finished, 10/40 units (25%), 0m 10s elapsed, ≈ 0m 30s left",
                     "grid (baselines + rounds): 1/4 finished, 14/40 units (35%), 1m 11s elapsed, ≈ 2m 12s left"]


def test_a_resumed_grid_paces_only_the_units_of_this_process(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    log = io.StringIO()
    with GridProgress(1000, 50, stream=log) as bar:
        bar.update(600, 30)  # 600 units done by an earlier process: no pace yet
        clock[0] += 120
        bar.update(616, 31)  # 16 units in 120 s: 384 to go -> 2880 s
    assert log.getvalue().splitlines() == [
        "grid (baselines + rounds): 30/50 finished, 600/1000 units (60%), 0m 00s elapsed",
        "grid (baselines + rounds): 31/50 finished, 616/1000 units (62%), 2m 00s elapsed, ≈ 48m 00s left"]


def test_disabled_progress_writes_nothing():
    log = io.StringIO()
    with GridProgress(4, 1, enabled=False, stream=log) as bar:
        bar.update(4, 1)
    assert log.getvalue() == ""


def test_elapsed_reads_as_a_duration():
    assert [elapsed(s) for s in (0, 59.6, 61, 3599, 3600, 7322)] == ["0m 00s", "1m 00s", "1m 01s", "59m 59s",
                                                                        "1h 00m", "2h 02m"]
