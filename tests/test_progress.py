"""Progress of a grid in a log (output to a file or a pipe): a line per finished run, and per minute; the time left
at the recent pace, once enough work is done (clocks injected: no test waits)."""

from __future__ import annotations

import io

from fairal.progress import ESTIMATING, GridProgress, elapsed


def test_a_log_gets_a_line_per_finished_run_and_per_minute():
    clock = [100.0]
    log = io.StringIO()
    with GridProgress(40, 4, stream=log, clock=lambda: clock[0]) as bar:
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
    # at 71 s, 14 units done: the later half (units 7 to 14) began at 10 s with 3 units done, 26 units to go:
    # 26 * (71 - 10) / (14 - 3) = 144.2 s; before 60 s no time left is told
    assert lines == ["grid (baselines + rounds): 0/4 finished, 0/40 units (0%), 0m 00s elapsed, " + ESTIMATING,
                     "grid (baselines + rounds): 1/4 finished, 10/40 units (25%), 0m 10s elapsed, " + ESTIMATING,
                     "grid (baselines + rounds): 1/4 finished, 14/40 units (35%), 1m 11s elapsed, ≈ 2m 24s left"]


def test_the_time_left_waits_for_enough_work_then_follows_the_recent_pace():
    clock = [0.0]
    with GridProgress(100, 10, stream=io.StringIO(), clock=lambda: clock[0]) as bar:
        told = []
        for t, units in ((0, 0), (30, 2), (60, 5), (90, 15), (100, 25)):
            clock[0] = t
            bar.update(units, 0)
            told.append(bar.time_left(units, t))
    # 0 s and 30 s: under MIN_SECONDS. At 60 s, 5 units (MIN_SHARE of 100): the later half (above 2.5 units)
    # began at 30 s with 2 done: 95 * 30 / 3 = 950 s. At 90 s: above 7.5 units, from 60 s with 5 done:
    # 85 * 30 / 10 = 255 s (the pace of all 90 s would say 510 s). At 100 s: above 12.5, again from 60 s: 75 * 40 / 20
    assert told == [None, None, 950.0, 255.0, 150.0]
    assert bar.left_text(25, 100) == "≈ 2m 30s left"
    assert bar.left_text(100, 100) == "≈ 0m 00s left"


def test_the_first_slow_unit_of_a_demo_tells_no_time_left():
    # make demo's grid: 194 units; one baseline done after 75 s was told as "≈ 4h 01m left" (193 * 75 s)
    clock = [0.0]
    with GridProgress(194, 26, stream=io.StringIO(), clock=lambda: clock[0]) as bar:
        bar.update(0, 0)
        clock[0] = 75
        bar.update(1, 1)
        assert bar.left_text(1, 75) == ESTIMATING
        clock[0] = 240
        bar.update(9, 1)  # under 5 % of 194 units (9.7) after 4 minutes: still not told
        assert bar.left_text(9, 240) == ESTIMATING
        clock[0] = 250
        bar.update(10, 1)  # the later half (above 5 units) from 75 s with 1 done: 184 * 175 / 9
        assert bar.time_left(10, 250) == 184 * 175 / 9


def test_a_resumed_grid_paces_only_the_units_of_this_process():
    clock = [0.0]
    log = io.StringIO()
    with GridProgress(1000, 50, stream=log, clock=lambda: clock[0]) as bar:
        bar.update(600, 30)  # 600 units done by an earlier process: no pace yet
        clock[0] += 60
        bar.update(616, 31)  # 16 of the 400 units left (under 5 %): no pace yet
        clock[0] += 60
        bar.update(624, 32)  # 24: above 612 units, from 0 s with 600 done: 376 * 120 / 24 s
    assert log.getvalue().splitlines() == [
        "grid (baselines + rounds): 30/50 finished, 600/1000 units (60%), 0m 00s elapsed, " + ESTIMATING,
        "grid (baselines + rounds): 31/50 finished, 616/1000 units (62%), 1m 00s elapsed, " + ESTIMATING,
        "grid (baselines + rounds): 32/50 finished, 624/1000 units (62%), 2m 00s elapsed, ≈ 31m 20s left"]


def test_disabled_progress_writes_nothing():
    log = io.StringIO()
    with GridProgress(4, 1, enabled=False, stream=log) as bar:
        bar.update(4, 1)
    assert log.getvalue() == ""


def test_elapsed_reads_as_a_duration():
    assert [elapsed(s) for s in (0, 59.6, 61, 3599, 3600, 7322)] == ["0m 00s", "1m 00s", "1m 01s", "59m 59s",
                                                                        "1h 00m", "2h 02m"]
