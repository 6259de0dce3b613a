"""Executors: where the tasks of a grid run. Each one takes the tasks, a picklable function that does one task in a
worker, and a callback for progress, and returns the tasks that failed with their errors; adding one (a Slurm
array, say) is a class with ``check``, ``trains_on_gpu`` and ``run``, and an entry in :data:`EXECUTORS`."""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from fairal.config import Profile
from fairal.errors import FairalError, plain_warnings
from fairal.run.loop import RunSpec
from fairal.run.train import check_device, resolve_device


@dataclass
class Task:
    """One unit of a grid: a dataset's baselines (``kind="baseline"``: its data folder and settings), one AL run
    (``"run"``: its :class:`fairal.run.loop.RunSpec`, typed, as the grid made it) or a group of runs of one dataset
    and seed in lockstep (``"lockstep"``, their run tasks in ``runs``). The dataset's manifest and the path of its
    volume cache travel with it, so that a worker reads neither the manifest nor a NIfTI file again. Tasks are
    pickled to the workers (a process pool, Ray), their specs with them."""

    kind: str
    data_dir: str
    out: str
    profile: Profile
    spec: RunSpec | None = None
    runs: list[Task] = field(default_factory=list)
    manifest: object = None
    volumes: str | None = None  # the volume cache's file

    @classmethod
    def for_run(cls, spec: RunSpec, out: str, manifest=None, volumes: str | None = None) -> Task:
        """One AL run into the folder ``out``."""
        return cls("run", spec.data_dir, out, spec.profile, spec, manifest=manifest, volumes=volumes)

    @classmethod
    def for_lockstep(cls, runs: list[Task], out: str) -> Task:
        """Run tasks of one dataset and seed, trained in lockstep (``out``: the folder named in messages)."""
        first = runs[0]
        return cls("lockstep", first.data_dir, out, first.profile, runs=list(runs), manifest=first.manifest,
                   volumes=first.volumes)


Failures = list[tuple[Task, Exception]]


class Executor(Protocol):
    name: str

    def check(self, profile) -> None:
        """Refuse, before anything is written, what this executor cannot run (a missing Ray, a missing GPU)."""

    def trains_on_gpu(self, profile) -> bool:
        """Whether the tasks train on a GPU (then the runs of a dataset and seed are packed into lockstep tasks)."""

    def run(self, tasks: list[Task], work: Callable[[Task], object], refresh: Callable[[], None]) -> Failures:
        """Do every task (``work(task)`` in a worker); ``refresh()`` now and then; the failed tasks and errors."""


def _cuda_here(profile) -> bool:
    return profile.device != "cpu" and resolve_device(profile.device).type == "cuda"


@dataclass
class LocalExecutor:
    """A process pool on this machine: ``jobs`` workers (0: one per core; one when lockstep tasks drive a GPU),
    torch threads = cores / workers; each worker dies with the driver."""

    jobs: int = 0
    name: str = "local"

    def check(self, profile) -> None:
        check_device(profile.device)

    def trains_on_gpu(self, profile) -> bool:
        return _cuda_here(profile)

    def run(self, tasks: list[Task], work, refresh) -> Failures:
        import multiprocessing
        from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

        if not tasks:
            return []
        cores = os.cpu_count() or 1
        jobs = max(1, min(self.jobs or cores, len(tasks)))
        ctx = multiprocessing.get_context("spawn")  # fork after torch threads have run can deadlock
        failures: Failures = []
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=init_worker,
                                 initargs=(max(1, cores // jobs), os.getpid())) as pool:
            pending = {pool.submit(work, t): t for t in tasks}
            while pending:
                finished, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)
                refresh()
                for fut in finished:
                    t = pending.pop(fut)
                    try:
                        fut.result()
                    except Exception as err:  # one broken run must not stop the grid
                        failures.append((t, err))
        return failures


@dataclass
class RayExecutor:
    """One Ray task per grid task, on a local Ray or the cluster at ``address``; a lost or failed task is retried
    ``max_retries`` times (and resumes after its last complete round). ``gpus_per_task`` may be fractional."""

    address: str | None = None
    cpus_per_task: int = 1
    gpus_per_task: float = 0.0
    max_retries: int = 3
    name: str = "ray"

    def check(self, profile) -> None:  # the workers may have GPUs that this driver has not: no device check
        try:
            import ray  # noqa: F401
        except ImportError as err:
            raise FairalError("--executor ray needs Ray: pip install 'fairal[ray]'") from err

    def trains_on_gpu(self, profile) -> bool:
        return profile.device != "cpu" and (_cuda_here(profile) or self.gpus_per_task > 0)

    def run(self, tasks: list[Task], work, refresh) -> Failures:
        import ray

        if not tasks:
            return []
        if not ray.is_initialized():
            start_ray(ray, self.address)
        remote = ray.remote(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=self.max_retries,
                            retry_exceptions=True)(_ray_task)
        refs = {remote.remote(t, work, self.cpus_per_task): t for t in tasks}
        failures: Failures = []
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            refresh()
            for ref in ready:
                try:
                    ray.get(ref)
                except Exception as err:  # retries used up
                    failures.append((refs[ref], err))
        return failures


def start_ray(ray, address: str | None, attempts: int = 3) -> None:
    """Connect to the cluster at ``address`` or start a local Ray. Ray gives a new local node 30 s to register
    (fixed in Ray); on a busy machine it may need longer, so a local start is tried ``attempts`` times before it is
    refused with the reason."""
    if address:
        ray.init(address=address)
        return
    for attempt in range(1, attempts + 1):
        try:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
            return
        except Exception as err:  # Ray raises a bare Exception when its node does not come up in time
            if "timed out during startup" not in str(err):
                raise  # another cause: trying again would not help
            ray.shutdown()
            if attempt == attempts:
                raise FairalError(f"a local Ray did not start ({attempts} attempts: {err}); on a busy machine "
                                  "wait for other work to finish, or use --executor local") from err


#: The executors by name (``--executor``).
EXECUTORS: dict[str, type] = {"local": LocalExecutor, "ray": RayExecutor}


def make_executor(name: str, **options) -> Executor:
    """The executor ``name`` with the options it takes (others are ignored: the CLI passes them all)."""
    if name not in EXECUTORS:
        raise FairalError(f"--executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
    whole = {"jobs": 0, "cpus_per_task": 1, "max_retries": 0}  # the smallest value each may take
    for key, low in whole.items():
        v = options.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
            raise FairalError(f"--{key.replace('_', '-')} must be a whole number >= {low}, got {v!r}")
    gpus = options.get("gpus_per_task")
    if gpus is not None and (isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not math.isfinite(gpus)
                             or gpus < 0):
        raise FairalError(f"--gpus-per-task must be a number >= 0 (fractions share a GPU), got {gpus!r}")
    cls = EXECUTORS[name]
    return cls(**{k: v for k, v in options.items() if k in cls.__dataclass_fields__ and k != "name"})


def _ray_task(task: Task, work, threads: int):
    torch.set_num_threads(threads)
    return work(task)


def init_worker(threads: int, parent: int) -> None:
    """A grid worker: its torch threads, and it dies with the driver (a driver killed with kill -9 must not
    leave workers writing runs that a rerun would write too)."""
    torch.set_num_threads(threads)
    plain_warnings()
    die_with_parent(parent)


def die_with_parent(parent: int) -> None:
    """Ask the kernel to kill this process when its parent dies (Linux ``PR_SET_PDEATHSIG``); elsewhere a no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    except OSError:
        return
    if os.getppid() != parent:  # the parent died before the request was made
        os._exit(1)


def describe(task: Task) -> str:
    """A task in a line, for messages."""
    if task.kind == "lockstep":
        return f"{Path(task.out)} ({len(task.runs)} runs in lockstep)"
    return task.out
