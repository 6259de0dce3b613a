"""fairal's size limits, in one place (docs/limits.md). Each is checked before anything is allocated, written or
run, and a refusal names the limit and the size asked for: a setting of ``2^63 - 1`` steps, a grid of
2000 x 2000 x 2000 voxels or a tampered record that claims 10^12 seeds is one line of error, never a memory error
after minutes of work. The limits are far above what any experiment of the paper's kind needs."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

from fairal.errors import FairalError

#: The most voxels of any volume fairal allocates (an image, a label map, an analysis grid, a simulated grid):
#: 512^3, 512 MiB as float32, beyond any brain MRI at 0.5 mm.
MAX_VOXELS = 512**3
#: The most subjects (cases) of a dataset fairal simulates, its evaluation split included; and the largest count
#: of cases a setting may ask for (cohort_size, final_size, test_per_group, ...). The paper's datasets have 312.
MAX_SUBJECTS = 100_000
#: The most seeds of an experiment (a study's ``seeds``, ``--seeds``, the ``seeds`` setting): a verdict needs
#: about ten.
MAX_SEEDS = 1_000
#: The most optimiser steps of one training (``steps``, ``round_steps``, ``first_round_steps``, or ``epochs``
#: worked out to steps): the paper's 200 epochs are about 6,300.
MAX_STEPS = 1_000_000
#: The most epochs of one training (the paper's 200).
MAX_EPOCHS = 10_000
#: The most cases of one training step (``batch_size``).
MAX_BATCH_SIZE = 256
#: The most MC-dropout samples per case and random candidate batches (``mc_samples``, ``stochastic_batches``).
MAX_SAMPLES = 10_000
#: The widest dilation of the localized-entropy ROI, in voxels (``roi_dilation``).
MAX_DILATION = 256
#: The U-Net's width and depth (``features``): at most this many channels at a level, and this many levels. The
#: paper's network is (8, 16); 512 channels at each of 6 levels is about 200 million weights (0.8 GB).
MAX_FEATURES = 512
MAX_LEVELS = 6
#: The most runs of a study's plan ``fairal report`` enumerates (datasets x initial sets x strategies x seeds).
MAX_RUNS = 1_000_000
#: The largest record file ``fairal report`` reads (a run's ``config.json``, ``state.json``, ``rounds.csv``,
#: ``cases.csv``, a study's ``study.json``, tidy records' tables): the paper's biggest is under 2 MB.
MAX_RECORD_BYTES = 256 * 2**20
#: The deepest nesting of lists and tables in a study file or a JSON record (a study file needs 6).
MAX_NESTING = 32
#: What one simulated subject takes on disk per voxel of its grid, image and label compressed: measured 1.65 for
#: the MNI template's 16-bit images (a float template takes more), so the estimate errs on the small side.
DISK_BYTES_PER_VOXEL = 1.5
#: What one case takes in memory per voxel once loaded for training: a float32 image and a uint8 label.
MEMORY_BYTES_PER_VOXEL = 5


def refuse_above(what: str, value: int, limit: int, name: str, verb: str = "asks for", unit: str = "") -> None:
    """Refuse ``value`` (what ``what`` asks for) above ``limit``, the constant ``name`` of this module."""
    if value > limit:
        raise FairalError(f"{what} {verb} {value:,}{unit}, more than fairal's limit of {limit:,}{unit} ({name}, "
                          "docs/limits.md)")


def check_network(features, what: str = "features") -> None:
    """The U-Net's channels per level (``features``) within :data:`MAX_FEATURES` and its levels within
    :data:`MAX_LEVELS`, before a weight is allocated."""
    refuse_above(f"{what} (a level's channels)", max(features), MAX_FEATURES, "MAX_FEATURES")
    refuse_above(f"{what} (the levels)", len(features), MAX_LEVELS, "MAX_LEVELS")


def check_voxels(shape, what: str, hint: str = "") -> None:
    """Refuse, before anything is allocated, a volume of ``shape`` with more than :data:`MAX_VOXELS` voxels."""
    n = math.prod(int(v) for v in shape)
    if n > MAX_VOXELS:
        size = " x ".join(str(int(v)) if int(v) < 10**12 else _count(int(v)) for v in shape)
        raise FairalError(f"{what} has {size} = {_count(n)} voxels, more than fairal's limit of {MAX_VOXELS:,} "
                          f"(512^3){hint}")


def _count(n: int) -> str:
    """A count as a message writes it: 1,234,567, or 1.2e+300 beyond a trillion (never hundreds of digits)."""
    if n < 10**12:
        return f"{n:,}"
    e = int(math.log10(n))  # for any int (a float of it would overflow past 1e308); off by one at most
    e += n >= 10 ** (e + 1)
    e -= n < 10**e
    digits = n // 10 ** (e - 2)
    return f"{digits // 100}.{digits % 100:02d}e+{e}"


def check_nesting(value, what: str) -> None:
    """Refuse lists and tables nested deeper than :data:`MAX_NESTING` (walked without recursion)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth + 1 > MAX_NESTING:
                    raise FairalError(f"{what} nests lists or tables more than {MAX_NESTING} deep (fairal's limit, "
                                      "MAX_NESTING, docs/limits.md)")
                stack.append((child, depth + 1))


def free_disk(folder: str | Path) -> int | None:
    """Bytes free on the disk that holds ``folder`` (or, not made yet, its nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation without swapping (Linux: MemAvailable), None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def check_room(n_cases: int, shape, folder: str | Path, what: str, downsample: int | None = None) -> None:
    """Refuse a dataset of ``n_cases`` volumes of ``shape`` voxels whose files would not fit on the disk of
    ``folder`` (:data:`DISK_BYTES_PER_VOXEL`) or, with ``downsample`` (the volumes are loaded whole, uncropped, at
    that factor), whose volumes would not fit in the memory available now."""
    size = " x ".join(str(int(v)) for v in shape)
    disk, free = n_cases * math.prod(shape) * DISK_BYTES_PER_VOXEL, free_disk(folder)
    if free is not None and disk > free:
        raise FairalError(f"{what}: {n_cases:,} subjects of {size} voxels take about {_gb(disk)} on disk, more "
                          f"than the {_gb(free)} free at {folder}: fewer subjects or a smaller shape")
    if downsample:
        grid = math.prod(math.ceil(int(v) / downsample) for v in shape)
        memory, available = n_cases * grid * MEMORY_BYTES_PER_VOXEL, available_memory()
        if available is not None and memory > available:
            raise FairalError(f"{what}: {n_cases:,} subjects of {size} voxels (downsample {downsample}, no crop) "
                              f"take {_gb(memory)} in memory once loaded, more than the {_gb(available)} available: "
                              "fewer subjects, a smaller shape, a crop (crop_margin) or a larger downsample")
