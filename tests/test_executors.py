"""The grid on Ray gives the local executor's records, and survives a lost worker."""

from __future__ import annotations

import os
import shutil

import pytest

from fairal.config import get_profile
from fairal.errors import FairalError
from fairal.grid.driver import reproduce
from fairal.io import MARKER

from .records import same_records

# The smoke profile, cut to two rounds, very short trainings and three strategies (one of the paper's, one with
# MC-dropout draws, one with random candidate batches): the records, not the numbers, are under test.
# fp32 (bf16=off): the lockstep grid is compared with it within float tolerance.
TINY = {"final_size": "14", "steps": "4", "round_steps": "2", "cohort_size": "4", "bf16": "off",
        "strategies": "entropy,weighted-bald,stochastic-weighted-localized-entropy"}
RECORDS = ("rounds.csv", "cases.csv", "selections.csv")


@pytest.fixture(scope="module")
def local_grid(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    reproduce(out, get_profile("smoke", TINY), jobs=2, progress=False)
    return out


def _records(out):
    return {str(p.relative_to(out)): p.read_text() for name in RECORDS for p in sorted(out.glob(f"runs/**/{name}"))}


def _with_data(local, tmp_path, name):
    out = tmp_path / name
    shutil.copytree(local / "data", out / "data")  # same datasets: only the executor differs
    shutil.copyfile(local / MARKER, out / MARKER)  # a copy of part of a results folder of fairal's
    return out


def test_local_grid_is_complete(local_grid):
    records = _records(local_grid)
    assert len(records) == 3 * 18  # 2 datasets x 3 initial sets x 3 strategies, three files each
    assert (local_grid / "baseline" / "weak" / "baseline_table.csv").is_file()


@pytest.fixture(scope="module")
def lockstep_grid(local_grid, tmp_path_factory):
    out = _with_data(local_grid, tmp_path_factory.mktemp("lockstep"), "grid")
    reproduce(out, get_profile("smoke", TINY), jobs=2, progress=False, pack="on")
    return out


def test_lockstep_grid_equals_local(local_grid, lockstep_grid):
    out = lockstep_grid
    runs = sorted(p.parent for p in local_grid.glob("runs/*/*/*/seed-*/rounds.csv"))
    assert len(runs) == 18
    for run in runs:  # 2 tasks (one per dataset) of 9 runs: 6 trained in lockstep, the 3 weighted-bald ones alone
        same_records(run, out / run.relative_to(local_grid))
    state = (out / "runs/strong/balanced/entropy/seed-0/state.json").read_text()
    assert '"finished": true' in state


# Loaded by every new Python process (Ray's workers) through PYTHONPATH: the first run to finish a round kills its
# own worker once, as a lost node would. The fault lives here, in the tests, not in fairal.
FAULT = """
import os
marker = os.environ.get("FAIRAL_TEST_FAULT_DIR")
if marker:
    import fairal.run.loop as loop
    real = loop.ActiveLearningRun._round

    def _round(self, rnd, *args, **kwargs):
        result = real(self, rnd, *args, **kwargs)
        try:
            fd = os.open(os.path.join(marker, "fault-injected"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return result
        os.write(fd, f"{self.out} round {rnd}".encode())
        os.close(fd)
        os._exit(1)

    loop.ActiveLearningRun._round = _round
"""


def test_ray_grid_equals_local(local_grid, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    out = _with_data(local_grid, tmp_path, "ray")
    marker = tmp_path / "marker"
    marker.mkdir()
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("FAIRAL_TEST_FAULT_DIR", str(marker))  # one worker dies after its first round
    try:
        reproduce(out, get_profile("smoke", TINY), progress=False, executor="ray", cpus_per_task=1)
    finally:
        ray.shutdown()
    assert (marker / "fault-injected").is_file()  # the fault did happen, and was survived
    assert _records(out) == _records(local_grid)


def test_ray_missing_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray":
            raise ImportError("no ray here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(FairalError, match=r"needs Ray: pip install 'fairal\[ray\]'"):
        reproduce(tmp_path, get_profile("smoke"), executor="ray", progress=False)


def test_lockstep_groups_are_one_dataset_and_seed():
    from fairal.grid.driver import lockstep_groups
    from fairal.grid.executors import Task
    from fairal.run.loop import RunSpec

    smoke = get_profile("smoke")
    runs = [Task.for_run(RunSpec(d, st, "balanced", s, smoke), f"{d}/{s}/{st}") for d in ("strong", "weak")
            for s in (0, 1) for st in ("random", "entropy", "bald")]
    groups = lockstep_groups(runs, 0)
    assert [len(g) for g in groups] == [3] * 4
    assert all(len({(r.data_dir, r.spec.seed) for r in g}) == 1 for g in groups)
    assert [len(g) for g in lockstep_groups(runs, 2)] == [2, 1] * 4
    assert [len(g) for g in lockstep_groups(runs, 1)] == [1] * 12


def test_packing_is_for_gpus_and_its_settings_are_checked(tmp_path):
    from fairal.grid.executors import EXECUTORS, LocalExecutor, RayExecutor, make_executor

    smoke = get_profile("smoke")
    cuda = __import__("torch").cuda.is_available()
    assert LocalExecutor().trains_on_gpu(smoke) is cuda  # device=auto: a GPU only if this process has one
    assert RayExecutor(gpus_per_task=0.5).trains_on_gpu(smoke)  # Ray tasks given GPUs train there
    assert not RayExecutor(gpus_per_task=0.5).trains_on_gpu(get_profile("smoke", {"device": "cpu"}))
    assert make_executor("ray", jobs=3, gpus_per_task=0.25) == RayExecutor(gpus_per_task=0.25)  # jobs: local's
    assert set(EXECUTORS) == {"local", "ray"}
    with pytest.raises(FairalError, match="--executor must be one of local, ray"):
        reproduce(tmp_path / "c", smoke, executor="slurm", progress=False)
    with pytest.raises(FairalError, match="--pack must be auto, on or off"):
        reproduce(tmp_path / "a", smoke, pack="yes", progress=False)
    with pytest.raises(FairalError, match="--pack-size must be a whole number"):
        reproduce(tmp_path / "b", smoke, pack_size=-1, progress=False)
    assert not any((tmp_path / x).exists() for x in "abc")  # refused before anything is written


def test_a_local_ray_that_does_not_start_is_retried_then_refused():
    from fairal.grid.executors import start_ray

    class SlowRay:  # Ray's node registers in time only at the second attempt, or never
        def __init__(self, fails):
            self.fails, self.inits, self.shutdowns = fails, 0, 0

        def init(self, **kwargs):
            self.inits += 1
            if self.inits <= self.fails:
                raise Exception("The current node timed out during startup.")

        def shutdown(self):
            self.shutdowns += 1

    late = SlowRay(fails=1)
    start_ray(late, None)
    assert (late.inits, late.shutdowns) == (2, 1)
    never = SlowRay(fails=10)
    with pytest.raises(FairalError, match=r"a local Ray did not start \(3 attempts: The current node timed out"):
        start_ray(never, None)
    assert never.inits == 3


    class BrokenRay(SlowRay):
        def init(self, **kwargs):
            self.inits += 1
            raise ValueError("bad argument")

    broken = BrokenRay(fails=0)
    with pytest.raises(ValueError, match="bad argument"):  # not a slow start: not tried again
        start_ray(broken, None)
    assert broken.inits == 1
