"""The groups of a simulated dataset: each group's morphological bias (the local deformation), its acquisition
(contrast, intensity non-uniformity, Rician noise) and its relative size.

Without a group spec there are the two groups of the paper: Group 1 with the local bias (``--bias``) and Group 2
without. A spec (``--group``, repeatable) replaces them: ``NAME[:key=value,...]`` with NAME a whole number >= 1
and the keys of :data:`GROUP_KEYS`, e.g. ``1:bias=strong,contrast=1.2,share=3``; a settings file may give the
same as a table ``{name = 1, bias = "strong", share = 3}``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from fairal.errors import SettingError

#: Bias presets, the seed paper's N(mu, sigma) of the local PC1 coefficient for Group 1 (in SD units).
BIAS_PRESETS: dict[str, tuple[float, float]] = {"strong": (4.0, 2.0), "weak": (2.0, 2.0), "none": (0.0, 0.0)}

#: The keys of a group spec and what each sets.
GROUP_KEYS: dict[str, str] = {
    "bias": "bias preset of the local deformation (strong, weak, none); without it the group has no local field",
    "bias_mean": "mean of the local coefficient c (SD units; overrides the preset's)",
    "bias_std": "SD of c (overrides the preset's)",
    "contrast": "SimBA's contrast factor (1.0: none)",
    "inu": "intensity non-uniformity level in % (BrainWeb: 20 = a field within 0.90-1.10)",
    "noise": "Rician noise SD in % of the white-matter intensity (BrainWeb: 3 typical)",
    "share": "relative size of the group (default 1)",
}


@dataclass(frozen=True)
class GroupSpec:
    """One group as given; a key left out is None (the defaults of :func:`resolve`)."""

    name: int
    bias: str | None = None
    bias_mean: float | None = None
    bias_std: float | None = None
    contrast: float | None = None
    inu: float | None = None
    noise: float | None = None
    share: float = 1.0


@dataclass(frozen=True)
class Group:
    """A group's resolved settings: ``biased`` groups draw ``c ~ N(bias_mean, bias_std)`` and get the local field;
    ``inu`` and ``noise`` are percentages (0: none), ``contrast`` a factor (1.0: none)."""

    name: int
    biased: bool
    bias_mean: float | None
    bias_std: float | None
    contrast: float = 1.0
    inu: float = 0.0
    noise: float = 0.0
    share: float = 1.0

    @property
    def acquisition_changed(self) -> bool:
        return self.contrast != 1.0 or self.inu != 0.0 or self.noise != 0.0

    def describe(self) -> str:
        """The group in words (``dataset.json``'s ``groups``)."""
        words = "local bias deformation of the structure" if self.biased else "global deformation only"
        extra = []
        if self.contrast != 1.0:
            extra.append(f"contrast factor {self.contrast:g} (SimBA)")
        if self.inu:
            extra.append(f"intensity non-uniformity {self.inu:g}% (a field within {1 - self.inu / 200:g}-"
                         f"{1 + self.inu / 200:g})")
        if self.noise:
            extra.append(f"Rician noise {self.noise:g}% of the white-matter intensity")
        return "; ".join([words, *extra])


def number(key: str, value, low: float | None = None, high: float | None = None, open_low: bool = False) -> float:
    """``value`` as a finite number within [low, high] (``open_low``: above low), else a SettingError on ``key``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SettingError(key, f"must be a finite number, got {value!r}")
    if low is not None and (value <= low if open_low else value < low):
        raise SettingError(key, f"must be {'>' if open_low else '>='} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise SettingError(key, f"must be <= {high:g}, got {value!r}")
    return float(value)


def preset(key: str, value) -> tuple[float, float]:
    if not isinstance(value, str) or value not in BIAS_PRESETS:
        raise SettingError(key, f"must be one of {', '.join(BIAS_PRESETS)}, got {value!r}")
    return BIAS_PRESETS[value]


def contrast_factor(key: str, value) -> float:
    return number(key, value, 0.0, open_low=True)


def inu_level(key: str, value) -> float:
    return number(key, value, 0.0, 100.0)  # 100%: a field within 0.5-1.5; beyond, intensities could vanish


def noise_level(key: str, value) -> float:
    return number(key, value, 0.0, 100.0)


def group_spec(value) -> GroupSpec:
    """A group from its spec text ``NAME[:key=value,...]`` or a table with ``name`` and the keys of
    :data:`GROUP_KEYS`; a SettingError on ``group`` names the spec and the problem."""
    try:
        fields = _spec_fields(value) if isinstance(value, str) else _table_fields(value)
        spec = GroupSpec(**fields)
        check_spec(spec)
    except SettingError as err:
        inner = err.problem if err.key == "group" else f"{err.key} {err.problem}"
        raise SettingError("group", f"{value!r}: {inner}") from None
    return spec


def _spec_fields(text: str) -> dict:
    name, _, rest = text.strip().partition(":")
    fields: dict = {"name": _group_name(name.strip())}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, raw = (s.strip() for s in item.partition("="))
        if not eq:
            raise SettingError("group", f"{item!r} is not key=value (spec: NAME[:key=value,...])")
        _known(key, fields)
        if key == "bias":
            fields[key] = raw
            continue
        try:
            fields[key] = float(raw)
        except ValueError:
            raise SettingError(key, f"must be a number, got {raw!r}") from None
    return fields


def _table_fields(table) -> dict:
    if not isinstance(table, Mapping):
        raise SettingError("group", "must be a spec NAME[:key=value,...] or a table with a name")
    if "name" not in table:
        raise SettingError("group", "has no name")
    fields: dict = {"name": _group_name(table["name"])}
    for key, value in table.items():
        if key != "name":
            _known(key, fields)
            fields[key] = value
    return fields


def _known(key: str, seen: dict) -> None:
    if key not in GROUP_KEYS:
        raise SettingError("group", f"unknown key {key!r} (keys: {', '.join(GROUP_KEYS)})")
    if key in seen:
        raise SettingError("group", f"key {key!r} given twice")


def _group_name(value) -> int:
    if isinstance(value, str) and value.isdigit() and value.isascii():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SettingError("group", f"the name must be a whole number >= 1, got {value!r}")
    return value


def check_spec(spec: GroupSpec) -> None:
    """Every value of a spec within its range (SettingError on its key)."""
    if spec.bias is not None:
        preset("bias", spec.bias)
    if spec.bias_mean is not None:
        number("bias_mean", spec.bias_mean)
    if spec.bias_std is not None:
        number("bias_std", spec.bias_std, 0.0)
    if spec.contrast is not None:
        contrast_factor("contrast", spec.contrast)
    if spec.inu is not None:
        inu_level("inu", spec.inu)
    if spec.noise is not None:
        noise_level("noise", spec.noise)
    number("share", spec.share, 0.0, open_low=True)


def resolve(spec: GroupSpec, inu_all: float, noise_all: float) -> Group:
    """A spec's settings: a group with ``bias``, ``bias_mean`` or ``bias_std`` draws c (the preset's N(mu, sigma),
    preset ``none`` when only the mean or SD is given); an unset INU or noise level is the one for every subject."""
    biased = spec.bias is not None or spec.bias_mean is not None or spec.bias_std is not None
    mu = sd = None
    if biased:
        mu, sd = preset("bias", spec.bias or "none")
        mu = mu if spec.bias_mean is None else float(spec.bias_mean)
        sd = sd if spec.bias_std is None else float(spec.bias_std)
    return Group(spec.name, biased, mu, sd, 1.0 if spec.contrast is None else float(spec.contrast),
                 inu_all if spec.inu is None else float(spec.inu),
                 noise_all if spec.noise is None else float(spec.noise), float(spec.share))


def check_names(specs: Sequence[GroupSpec]) -> None:
    names = [s.name for s in specs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise SettingError("group", f"names each group once; {', '.join(map(str, twice))} given more than once")


def split_by_shares(total: int, shares: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``shares`` by the largest remainder (Hamilton) method: each group gets the
    whole part of its quota ``total * share / sum(shares)``, and the subjects left over go one each to the largest
    fractional parts, ties to the earlier group (equal shares: the first groups get one more). Exact arithmetic."""
    exact = [Fraction(s) for s in shares]
    quotas = [total * s / sum(exact) for s in exact]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(quotas)), key=lambda i: (counts[i] - quotas[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts
