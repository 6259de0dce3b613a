"""Profiles: named, documented sets of settings that trade fidelity to the paper against time.

| profile    | for                                           | runs on        |
| ---------- | --------------------------------------------- | -------------- |
| ``smoke``    | tests and CI: the whole pipeline on tiny data, all strategies | any CPU, seconds |
| ``quick``    | a first run of the paper's grid               | laptop CPU, minutes |
| ``standard`` | meaningful results: the paper's 24 runs + 18 of 3 more strategies | 2-core CPU, ~1.5 hours |
| ``paper``    | the paper's settings (full volumes, 200 epochs, 5 seeds) | GPU(s) |

The CPU profiles train for about 1,000 steps instead of the paper's 200 epochs (~6,300 steps of 4 cases for
126 cases), so they use a learning rate of 1e-3 instead of 1e-4 to converge within that budget (measured: at
1,000 steps, lr 1e-4 leaves the Group 2-only model 0.025 Dice below lr 1e-3 on its own group). ``paper``
keeps 1e-4.

Any single setting can be overridden (``--set steps=200``); the records say which profile and overrides were used.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from fairal import limits
from fairal.acquisition import (  # noqa: F401  (re-exported: the grid's strategy lists)
    ALL_STRATEGIES,
    EXTRA_STRATEGIES,
    PAPER_STRATEGIES,
    STANDARD_EXTRAS,
    parse_strategy,
)
from fairal.errors import FairalError
from fairal.limits import check_network, check_voxels, refuse_above

#: The network of the profiles (:mod:`fairal.run.network`: the paper's U-Net).
DEFAULT_NETWORK = "unet"
#: A network's name: lower-case letters, digits, '-' and '_', starting with a letter.
NETWORK_NAME = re.compile(r"[a-z][a-z0-9_-]*")
#: The settings with an upper limit (fairal.limits, docs/limits.md): the limit and its name.
SETTING_LIMITS = {
    **{k: (limits.MAX_SUBJECTS, "MAX_SUBJECTS") for k in ("n_subjects", "test_per_group", "eval_per_group",
                                                            "cohort_size", "init_size", "acquire", "final_size")},
    **{k: (limits.MAX_STEPS, "MAX_STEPS") for k in ("steps", "round_steps", "first_round_steps")},
    "epochs": (limits.MAX_EPOCHS, "MAX_EPOCHS"), "batch_size": (limits.MAX_BATCH_SIZE, "MAX_BATCH_SIZE"),
    "seeds": (limits.MAX_SEEDS, "MAX_SEEDS"),
    "mc_samples": (limits.MAX_SAMPLES, "MAX_SAMPLES"), "stochastic_batches": (limits.MAX_SAMPLES, "MAX_SAMPLES"),
    "roi_dilation": (limits.MAX_DILATION, "MAX_DILATION"),
}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    # data (``reproduce`` simulates with these; ``baseline``/``run`` read any dataset)
    n_subjects: int = 312
    sim_shape: tuple[int, int, int] = (170, 170, 76)
    test_per_group: int = 15
    eval_per_group: int = 0  # evaluation subjects per group that ``reproduce`` simulates (split "eval")
    # Voxels of the data's grid around the template's structure (the simulated data are 1 mm: mm); None = whole
    # volume. ``fairal query`` reads it in mm, around the labeled structures (its images have any spacing).
    crop_margin: int | None = 12
    downsample: int = 2  # 1 = the data's 1 mm grid
    # model
    features: tuple[int, ...] = (8, 16)
    # the network trained (fairal.run.network's table: a plugin may add one); the records name it only when it is
    # not the built-in U-Net (see as_dict)
    network: str = DEFAULT_NETWORK
    # training
    lr: float = 1e-4
    device: str = "auto"  # auto: a GPU if this process has one, else the CPU
    bf16: str = "auto"  # bfloat16 autocast: auto (a CUDA GPU with bf16, a CPU with AMX), on, off
    steps: int = 300
    epochs: int | None = None  # if set, replaces steps: ceil(epochs * n / batch_size)
    batch_size: int = 4
    # baseline (Table 1): cohort sizes, the paper's 126
    cohort_size: int = 126
    # active learning
    init_size: int = 10
    acquire: int = 4
    final_size: int = 86
    warm_start: bool = True
    first_round_steps: int | None = None  # steps of the AL run's first round (None: ``steps``)
    round_steps: int = 150  # steps of a warm-started round (cold rounds use steps/epochs)
    seeds: int = 1
    eval_every: int = 1  # measure on the evaluation split every N-th round (and always the last)
    roi_dilation: int = 3
    temperature: float = 1.0
    # False: the strategies see no group of a pool case; a weighted strategy gives it the expected weight
    # sum_g p(g|x) w_g from a group classifier on the labeled cases, retrained every round (the records keep the
    # true group for the metrics)
    groups_known: bool = True
    # strategies beyond the paper (see fairal.acquisition)
    mc_dropout: float = 0.2  # dropout of the BALD strategies' U-Net (trained and sampled with it); others train without
    mc_samples: int = 8  # MC-dropout samples per pool case for BALD
    stochastic_batches: int = 50  # random candidate batches of the stochastic- strategies
    power_temperature: float = 1.0  # T of the power- strategies: cases drawn with probability ∝ score^(1/T)
    # the grid of ``fairal reproduce``: strategies run per dataset, initial set and seed
    strategies: tuple[str, ...] = PAPER_STRATEGIES
    # not a setting: True when ``strategies`` are those of a Profile checked before (:meth:`with_overrides` of other
    # settings), so that a study's many profiles do not parse the same names again
    strategies_checked: dataclasses.InitVar[bool] = False

    def __post_init__(self, strategies_checked: bool = False) -> None:
        """Every setting checked once, here, with a message naming it: the rest of fairal trusts a Profile."""
        def whole(name: str, low: int, value=None) -> None:
            v = getattr(self, name) if value is None else value
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise FairalError(f"setting {name} must be a whole number >= {low}, got {v!r}")
            if name in SETTING_LIMITS:
                refuse_above(f"setting {name}", v, *SETTING_LIMITS[name])

        def number(name: str, low: float, high: float = math.inf, open_low: bool = False) -> None:
            v = getattr(self, name)
            ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            ok = ok and (v > low if open_low else v >= low) and v < high
            if not ok:
                bound = f"> {low:g}" if open_low else f">= {low:g}"
                raise FairalError(f"setting {name} must be a finite number {bound}"
                                  + (f" and < {high:g}" if high < math.inf else "") + f", got {v!r}")

        for name, low in (("n_subjects", 2), ("test_per_group", 1), ("eval_per_group", 0), ("steps", 0),
                          ("batch_size", 1), ("cohort_size", 1), ("init_size", 2), ("acquire", 1), ("final_size", 2),
                          ("round_steps", 0), ("seeds", 1), ("eval_every", 1), ("roi_dilation", 0), ("mc_samples", 2),
                          ("stochastic_batches", 1)):
            whole(name, low)
        for name, low in (("crop_margin", 0), ("epochs", 0), ("first_round_steps", 0)):
            if getattr(self, name) is not None:
                whole(name, low)
        if self.downsample not in (1, 2, 3, 4) or isinstance(self.downsample, bool):
            raise FairalError(f"setting downsample must be 1, 2, 3 or 4, got {self.downsample!r}")
        if len(self.sim_shape) != 3:
            raise FairalError(f"setting sim_shape must be three sizes, got {self.sim_shape!r}")
        for v in self.sim_shape:
            whole("sim_shape", 4, v)
        check_voxels(self.sim_shape, "setting sim_shape")
        if not self.features:
            raise FairalError("setting features must list at least one channel count")
        for v in self.features:
            whole("features", 1, v)
        check_network(self.features, "setting features")
        if not isinstance(self.network, str) or not NETWORK_NAME.fullmatch(self.network):
            raise FairalError(f"setting network must be a network's name (lower-case letters, digits, '-', '_'), got "
                              f"{self.network!r}")
        number("lr", 0.0)
        number("temperature", 0.0, open_low=True)
        number("power_temperature", 0.0, open_low=True)
        number("mc_dropout", 0.0, 1.0)
        if self.final_size < self.init_size or (self.final_size - self.init_size) % self.acquire:
            reachable = ", ".join(str(self.init_size + k * self.acquire) for k in range(1, 4))
            raise FairalError(f"impossible budget of the active-learning schedule: settings init_size "
                              f"{self.init_size}, acquire {self.acquire}, final_size {self.final_size}; a run grows "
                              f"from init_size by acquire cases a round, so final_size must be one of "
                              f"{self.init_size}, {reachable}, ...")
        if not (self.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", str(self.device))):
            raise FairalError(f"setting device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.bf16 not in ("auto", "on", "off"):
            raise FairalError(f"setting bf16 must be auto, on or off, got {self.bf16!r}")
        if not self.strategies:
            raise FairalError("setting strategies must name at least one strategy")
        for name in () if strategies_checked else self.strategies:
            parse_strategy(name)

    def with_overrides(self, overrides: dict[str, str]) -> Profile:
        """A copy with settings replaced from ``key=value`` strings, each converted to the field's type."""
        fields = {f.name: f for f in dataclasses.fields(self)}
        values = {}
        for key, raw in overrides.items():
            name = key.replace("-", "_")
            if name not in fields or name in ("name", "description"):
                known = ", ".join(sorted(n for n in fields if n not in ("name", "description")))
                raise FairalError(f"unknown setting {key!r}; settings: {known}")
            values[name] = _convert(name, raw, getattr(self, name))
        return dataclasses.replace(self, **values, strategies_checked="strategies" not in values)

    def as_dict(self) -> dict:
        """Every setting, but ``network`` at its default: the records of the built-in network keep the form they had
        before the setting was added (and :func:`fairal.run.loop.same_settings` reads a missing setting as its
        default)."""
        out = dataclasses.asdict(self)
        if out["network"] == DEFAULT_NETWORK:
            del out["network"]
        return out


def _convert(name: str, raw: str, current):
    text = raw.strip()
    try:
        if text.lower() in ("none", "null") and name in ("crop_margin", "epochs", "first_round_steps"):
            return None
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if name == "strategies":
            return tuple(v.strip() for v in text.split(",") if v.strip())
        if isinstance(current, tuple):
            parts = [v.strip() for v in text.replace("x", ",").split(",")]
            if not all(parts):  # "8,x" or "8,,16": a part is missing, not silently dropped
                raise ValueError
            return tuple(int(v) for v in parts)
        if isinstance(current, int) or name in ("crop_margin", "epochs", "first_round_steps"):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError as err:
        kind = "a list of whole numbers (e.g. 8,16,32)" if isinstance(current, tuple) else type(current).__name__
        raise FairalError(f"setting {name}: cannot read {raw!r} as {kind}") from err
    return text


PROFILES: dict[str, Profile] = {
    p.name: p
    for p in (
        Profile(
            name="smoke",
            description="the whole pipeline on tiny data in seconds (tests, CI); results mean nothing",
            n_subjects=32,
            eval_per_group=4,
            sim_shape=(80, 96, 56),
            test_per_group=4,
            crop_margin=6,
            downsample=2,
            lr=1e-3,
            steps=15,
            batch_size=4,
            cohort_size=12,
            init_size=10,
            acquire=4,
            final_size=18,
            round_steps=6,
            mc_samples=3,
            stochastic_batches=10,
            strategies=ALL_STRATEGIES,
        ),
        Profile(
            name="quick",
            description="a first look at the whole grid in minutes on a laptop: small data, short training",
            n_subjects=120,
            eval_per_group=30,
            sim_shape=(128, 144, 76),
            test_per_group=15,
            crop_margin=8,
            downsample=2,
            lr=1e-3,
            steps=200,
            cohort_size=40,
            final_size=38,
            round_steps=40,
        ),
        Profile(
            name="standard",
            description="meaningful results on a 2-core CPU: full schedule 10 -> 86, 2 mm crop around the caudate, "
            "warm-started rounds, 1 seed",
            n_subjects=312,
            eval_per_group=150,
            crop_margin=12,
            downsample=2,
            lr=1e-3,
            steps=1000,
            cohort_size=126,
            first_round_steps=300,
            round_steps=60,
            strategies=PAPER_STRATEGIES + STANDARD_EXTRAS,
        ),
        Profile(
            name="paper",
            description="the paper's protocol: full 1 mm volumes, 200 epochs from scratch every round, 5 seeds (GPU)",
            n_subjects=312,
            eval_per_group=150,
            crop_margin=None,
            downsample=1,
            epochs=200,
            cohort_size=126,
            warm_start=False,
            seeds=5,
        ),
    )
}


def get_profile(name: str, overrides: dict[str, str] | None = None) -> Profile:
    if name not in PROFILES:
        raise FairalError(f"unknown profile {name!r}; profiles: {', '.join(PROFILES)}")
    return PROFILES[name].with_overrides(overrides or {})


def setting_name(key: str) -> str:
    """A setting's field name as a ``--set`` key or a study file's ``set`` key may write it (``n-subjects``)."""
    return key.strip().replace("-", "_")


def parse_overrides(items: list[str] | None, option: str = "--set") -> dict[str, str]:
    """``["steps=200", "downsample=1"]`` -> ``{"steps": "200", "downsample": "1"}`` (``option``: the option the
    messages name); a key given again takes its last value, as a script's defaults followed by a user's choice."""
    out: dict[str, str] = {}
    for item in items or []:
        if "=" not in item:
            raise FairalError(f"{option} takes KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out
