"""Acquisition: voxel uncertainties, the volume scores of each strategy, the group weights, and the selection.

Scoring is kept apart from selection: each strategy turns per-case statistics into one score per pool case,
and :func:`select` picks the cases to annotate (the top k, or the best of random candidate batches), so any
score composes with either selection rule. A base score may also see the whole pool at once (:class:`PoolScore`:
every candidate's and labeled case's features, the budget, the round's random stream): it gives one score per
case, which composes as a statistic does, or, a chooser, the batch itself.

A strategy name composes three parts, ``[SELECTION-][STEERING-]BASE[-tT]``, one table entry each (baal's
composition: steering and selection apart from the base score):

| part | meaning |
| --- | --- |
| ``random`` | a seeded uniform draw |
| ``entropy`` | mean voxel entropy over the whole (cropped) volume |
| ``localized-entropy`` | Eq. 1: mean voxel entropy over R, the predicted mask dilated by r voxels |
| ``bald`` | MC-dropout BALD: mean voxel mutual information ``H[E p] - E H[p]`` over R (dropout samples) |
| ``fair-influence`` | first-order influence on the group gap of the labeled set (Pang et al. 2024) |
| ``core-set`` | Sener & Savarese 2018: greedy k-center on the network's predicted maps, a batch chosen from the whole \
pool at once (a pool-wide chooser: no steering or selection) |
| ``weighted-`` | Eq. 2: the score times the group weight ``w_g(x)`` (expected weight if the group is unknown) |
| ``worst-group-`` | min-max (Abernethy et al. 2022): the group of the largest ``w_g`` first, ranked by the score; \
fill from the next group by weight |
| ``balanced-`` | each group ranked by the score, slots taken round-robin over the groups, largest ``w_g`` first \
(Branchaud-Charron et al. 2021) |
| ``group-drawn-`` | each slot's group drawn with probability ``w_g``, then that group's best case by the score \
(``group-drawn-random``: WLE's steering with a uniform case of the group) |
| ``-tT`` | the softmax temperature T of the group weights (default: the profile's, 1 in the paper) |
| ``stochastic-`` | Gaillochet et al. 2023: draw random candidate batches of the budget's size and take the one with \
the highest mean score |
| ``power-`` | k cases drawn without replacement with probability proportional to ``score^(1/T)`` (baal's \
PowerSampling; T the profile's ``power_temperature``) |

The paper's four are ``random``, ``entropy``, ``localized-entropy`` and ``weighted-localized-entropy``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fairal.errors import FairalError
from fairal.influence import fair_influence
from fairal.records import PAPER_STRATEGIES

#: The ones beyond the paper's four (:data:`fairal.records.PAPER_STRATEGIES`) that the grids run by default.
EXTRA_STRATEGIES = ("bald", "weighted-bald", "stochastic-weighted-localized-entropy", "weighted-localized-entropy-t0.5")
ALL_STRATEGIES = PAPER_STRATEGIES + EXTRA_STRATEGIES
#: The extras of the ``standard`` grid: plain ``bald`` is left out there (MC dropout makes a round ~4x longer on a CPU).
STANDARD_EXTRAS = ("weighted-bald", "stochastic-weighted-localized-entropy", "weighted-localized-entropy-t0.5")

__all__ = ["PAPER_STRATEGIES", "ALL_STRATEGIES", "BASES", "STATISTICS", "Base", "Statistic", "CaseMaps", "register",
           "case_statistics", "Strategy", "parse_strategy", "group_weights", "expected_weights", "case_weights",
           "strategy_scores", "select", "select_top_k", "stochastic_batch", "power_order", "rank_cases", "ranking",
           "STEERINGS", "SELECTIONS", "worst_group_order", "balanced_order", "group_drawn_order", "steering_groups"]

_EPS = 1e-7


@dataclass(frozen=True)
class CaseMaps:
    """What a statistic sees of one candidate case, as tensors on the device where the model predicts: the
    foreground probability (X, Y, Z), the ROI R of Eq. 1 (bool, :func:`roi_mask`) and, for the statistics that
    need them, the MC-dropout samples (T, X, Y, Z) of the model with dropout."""

    proba: torch.Tensor
    roi: torch.Tensor
    samples: torch.Tensor | None = None


@dataclass(frozen=True)
class Statistic:
    """A per-case statistic that a base score ranks by: its name (its column in ``selections.csv``, ``query.csv``
    and the API's table), how it is computed from a case's maps (:class:`CaseMaps`, on the model's device: one
    implementation for the CPU and a GPU; None for one the round engine computes from the model), its words in
    reasons, and whether it needs MC-dropout samples."""

    name: str
    compute: Callable[[CaseMaps], float] | None
    label: str
    needs_dropout: bool = False
    # computed by the round engine from the network itself: (model, candidate images, labeled images, their labels,
    # their groups) -> one value per candidate (:func:`fairal.influence.fair_influence`)
    from_model: Callable | None = None

    @property
    def needs_model(self) -> bool:
        return self.from_model is not None

    @property
    def needs(self) -> str:
        """What it takes beyond a probability map, in words ("" for nothing)."""
        if self.needs_model:
            return "computed from the network in fairal run, study or query, not from saved probabilities"
        return "MC-dropout samples of the network" if self.needs_dropout else ""


@dataclass(frozen=True)
class PoolView:
    """What a pool-wide score (:class:`PoolScore`) sees of one round, all at once: the candidates (ids, in the
    round's order), each candidate's and each labeled case's embedding (rows of ``features`` and
    ``labeled_features``: :attr:`PoolScore.embed`), the per-case statistics of the round (:data:`STATISTICS`, one
    value per candidate; NaN for those not computed), the number of cases the round acquires, and the round's
    random stream (draws from it are the strategy's own)."""

    candidates: list[str]
    features: np.ndarray
    labeled_features: np.ndarray
    stats: Mapping[str, Sequence[float]]
    k: int
    rng: np.random.Generator


@dataclass(frozen=True)
class PoolScore:
    """A base score that sees the whole pool at once (batch-aware: core-set, BADGE, ...): ``compute`` takes the
    round's :class:`PoolView` and returns one score per candidate (it then composes with every steering and
    selection, as a statistic does) or, with ``chooses``, the batch itself: the positions of ``min(k, n)``
    candidates, best first (a chooser takes no steering or selection: they need one score per case). ``embed``:
    ``(model, images) -> (cases, d)`` features (None: the round's default, each case's predicted foreground
    probability averaged over a 4 x 4 x 4 grid of blocks). Its name keys its values in the round's statistics; it is
    not a column of the records."""

    name: str
    compute: Callable[[PoolView], Sequence[float]]
    label: str
    chooses: bool = False
    embed: Callable | None = None


@dataclass(frozen=True)
class Base:
    """A base score: its name in strategy names, the statistic it ranks by (a name of :data:`STATISTICS`;
    ``None`` for a seeded uniform draw or a pool-wide score), its words in figures and reasons, and, for a score
    that sees the whole pool at once, its :class:`PoolScore`."""

    name: str
    statistic: str | None
    label: str
    reason: str
    pool: PoolScore | None = None
    signed: bool = False  # its scores may be negative: no rule that multiplies them or draws in proportion to them

    @property
    def needs_dropout(self) -> bool:
        """A U-Net with dropout for MC-dropout samples."""
        return self.statistic is not None and STATISTICS[self.statistic].needs_dropout

    @property
    def chooses(self) -> bool:
        """It picks the whole batch itself (a pool-wide chooser), not one score per case."""
        return self.pool is not None and self.pool.chooses


@dataclass(frozen=True)
class Steering:
    """How the group weights steer a selection: its prefix in strategy names (``""``: none), its words, whether
    it multiplies the base score by the case's weight (Eq. 2), and, for a steering that fills the slots group by
    group, how (:func:`worst_group_order`, :func:`balanced_order`, :func:`group_drawn_order`)."""

    name: str
    label: str
    scales_scores: bool = False
    by_group: Callable | None = None
    by_value: bool = False  # the weights' values steer, not only their order (so a temperature matters)

    @property
    def prefix(self) -> str:
        return f"{self.name}-" if self.name else ""


@dataclass(frozen=True)
class Selection:
    """How the slots are filled from the scores: its prefix (``""``: the top k), its words, and the order it
    ranks a set of cases in (``None``: stochastic batches, which pick a batch, not an order)."""

    name: str
    label: str
    order: Callable | None = None

    @property
    def prefix(self) -> str:
        return f"{self.name}-" if self.name else ""


@dataclass(frozen=True)
class Strategy:
    """A parsed strategy name: its base score, its group steering (``""``, ``weighted``, ``worst-group``,
    ``balanced``, ``group-drawn``), its own softmax temperature (None: the profile's) and its selection (``""``:
    top k, ``stochastic``, ``power``)."""

    name: str
    base: str
    steering: str = ""
    temperature: float | None = None
    selection: str = ""

    @property
    def spec(self) -> Base:
        return BASES[self.base]

    @property
    def weighted(self) -> bool:
        """Eq. 2: the base score times the group weight."""
        return self.steering == "weighted"

    @property
    def steered(self) -> bool:
        """The group weights steer the choice (any steering): the round computes them."""
        return bool(self.steering)

    @property
    def stochastic(self) -> bool:
        return self.selection == "stochastic"

    @property
    def needs_dropout(self) -> bool:
        return self.spec.needs_dropout

    @property
    def label(self) -> str:
        """In words, for figures: "weighted localized entropy", "stochastic batches of weighted BALD, T = 0.5"."""
        text = (STEERINGS[self.steering].label + " " if self.steering else "") + self.spec.label
        if self.selection:
            text = SELECTIONS[self.selection].label + " " + text
        return text + (f", T = {self.temperature:g}" if self.temperature is not None else "")


def strategy_names() -> list[str]:
    """Every strategy name without a temperature: ``[SELECTION-][STEERING-]BASE`` for each part of the tables
    that :func:`parse_strategy` accepts (a well-formed name, so its refusals are the only ones left out)."""
    names = []
    for sel in SELECTIONS.values():
        for steer in STEERINGS.values():
            for base in BASES:
                try:
                    names.append(parse_strategy(f"{sel.prefix}{steer.prefix}{base}").name)
                except FairalError:
                    continue
    return names


def did_you_mean(name: str) -> str:
    """``" (did you mean 'entropy'?)"`` for a mistyped strategy name (the closest names, by difflib), else ``""``."""
    t = re.search(r"-t[0-9.]+$", name)
    stem, tail = (name[:t.start()], t.group()) if t else (name, "")
    close = difflib.get_close_matches(stem.lower(), strategy_names(), n=2, cutoff=0.75)
    ratio = [difflib.SequenceMatcher(None, stem.lower(), c).ratio() for c in close]
    close = [c for c, r in zip(close, ratio, strict=True) if r >= ratio[0] - 0.02]  # a near tie, not a longer name
    return f" (did you mean {' or '.join(repr(c + tail) for c in close)}?)" if close else ""


def _split_name(text: str) -> tuple[str, str, str, str | None] | None:
    """``(selection, steering, base, temperature text)`` of a name, by the tables' prefixes; None if no base."""
    t = re.search(r"-t(-?[0-9.]+)$", text)
    stem, temp = (text[:t.start()], t.group(1)) if t else (text, None)
    selection = next((k for k, v in SELECTIONS.items() if k and stem.startswith(v.prefix)), "")
    stem = stem[len(SELECTIONS[selection].prefix):]
    steering = next((k for k, v in STEERINGS.items() if k and stem.startswith(v.prefix)), "")
    base = stem[len(STEERINGS[steering].prefix):]
    return (selection, steering, base, temp) if base in BASES else None


def parse_strategy(name: str | Strategy) -> Strategy:
    """Read ``[SELECTION-][STEERING-]BASE[-tT]``; a clear error for anything else."""
    if isinstance(name, Strategy):
        return name
    text = str(name).strip()
    parts = _split_name(text)
    if parts is None:
        close = did_you_mean(text)
        plugin = "" if close else "; a base score of a plugin is known once the plugin is loaded (fairal --plugin FILE)"
        raise FairalError(f"unknown strategy {name!r}{close}: a name is [SELECTION-][STEERING-]BASE[-tT] with "
                          f"SELECTION one of {', '.join(v.prefix for v in SELECTIONS.values() if v.name)}, STEERING "
                          f"one of {', '.join(v.prefix for v in STEERINGS.values() if v.name)} and BASE one of "
                          f"{', '.join(BASES)} (e.g. {', '.join(ALL_STRATEGIES)}){plugin}")
    selection, steering, base, temp = parts
    temperature = None
    if temp is not None:
        try:
            temperature = float(temp)
        except ValueError:
            raise FairalError(f"strategy {name!r}: cannot read the temperature {temp!r}") from None
        if not steering:
            raise FairalError(f"strategy {name!r}: a temperature (-t{temp}) needs group weights (a steering: "
                              f"{', '.join(v.prefix for v in STEERINGS.values() if v.name)})")
        if not temperature > 0 or not math.isfinite(temperature):
            raise FairalError(f"strategy {name!r}: the softmax temperature must be > 0")
        if not STEERINGS[steering].by_value:
            raise FairalError(f"strategy {name!r}: {steering}- follows only the order of the group weights, which "
                              f"a temperature does not change: leave -t{temp} out")
    if selection and base == "random" and (not steering or STEERINGS[steering].by_group is not None):
        within_groups = " within each group" if steering else ""
        raise FairalError(f"strategy {name!r}: {SELECTIONS[selection].prefix} on random scores is just "
                          f"'{STEERINGS[steering].prefix}random' (a random order{within_groups})")
    if selection == "stochastic" and STEERINGS[steering].by_group is not None:
        raise FairalError(f"strategy {name!r}: stochastic batches pick a whole batch, not an order of cases, so "
                          f"they cannot fill slots group by group ({steering}-); use power- or the top k")
    scaled = [p for p, yes in ((STEERINGS[steering].prefix, STEERINGS[steering].scales_scores),
                               (SELECTIONS[selection].prefix, selection == "power")) if yes]
    if BASES[base].signed and scaled:
        raise FairalError(f"strategy {name!r}: {base}'s scores are signed (negative where a case is expected to "
                          f"widen the gap), and {' and '.join(scaled)} needs scores >= 0 (it multiplies them or draws "
                          f"in proportion to them); steer it by the order within groups: worst-group-, balanced- or "
                          f"group-drawn-")
    if BASES[base].chooses and (selection or steering):
        parts = " and ".join(p for p in (SELECTIONS[selection].prefix, STEERINGS[steering].prefix) if p)
        raise FairalError(f"strategy {name!r}: {base} chooses the whole batch itself from the pool (a pool-wide "
                          f"chooser), so it takes no {parts} (they need one score per case); use {base!r} alone")
    return Strategy(text, base, steering, temperature, selection)


def _tensor(x) -> torch.Tensor:
    """A tensor, or a NumPy array (any array-like) as one without a copy; anything else is refused, named."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], str):
        raise FairalError("got a pair (array, str): roi_mask and mutual_information return (map, ...); pass the "
                          "first item")
    try:
        a = np.ascontiguousarray(x)
    except (TypeError, ValueError) as err:
        raise FairalError(f"expected a numeric array or tensor, got {type(x).__name__} ({err})") from None
    if a.dtype.kind not in "biuf":
        raise FairalError(f"expected a numeric array or tensor, got {type(x).__name__} of dtype {a.dtype}")
    return torch.from_numpy(a)


def _like(result: torch.Tensor, given):
    """The result in the kind of the input: a tensor for a tensor, a NumPy array for anything else."""
    return result if isinstance(given, torch.Tensor) else result.cpu().numpy()


def voxel_entropy(proba):
    """Binary entropy (nats) of the sigmoid output p: ``H = -p log p - (1 - p) log(1 - p)``; 0 at p = 0 or 1.
    Float64, on the device of a tensor (a NumPy array gives a NumPy array)."""
    p = _tensor(proba).double().clamp(_EPS, 1 - _EPS)
    return _like(-(p * torch.log(p) + (1 - p) * torch.log1p(-p)), proba)


def mutual_information(samples):
    """BALD's voxel mutual information from T dropout samples ``(T, X, Y, Z)`` of the foreground probability:
    ``I = H(mean_t p_t) - mean_t H(p_t)`` (>= 0). Returns ``(I, mean_t p_t)``, float64."""
    s = _tensor(samples).double()
    if s.dim() < 2 or s.shape[0] < 2:
        raise FairalError(f"BALD needs at least 2 dropout samples, got shape {tuple(s.shape)}")
    mean = s.mean(dim=0)
    mi = (voxel_entropy(mean) - voxel_entropy(s).mean(dim=0)).clamp_min(0.0)
    return _like(mi, samples), _like(mean, samples)


def _ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius**2


def roi_mask(proba, dilation: int, fallback=None) -> tuple:
    """R for Eq. 1: the predicted mask (p > 0.5) dilated by a ball of ``dilation`` voxels.

    When nothing is predicted, the ``fallback`` region (the template's structure) dilated the same way is used;
    with no usable fallback, the whole volume. Returns the mask (a tensor on the map's device for a tensor, else a
    NumPy array) and which of ``predicted``/``template``/``volume`` it came from. The dilation is a convolution
    with the ball (zero padding: outside the volume is background); its counts are small integers, exact in
    float32.
    """
    p = _tensor(proba)
    pred = p > 0.5
    source = "predicted"
    if not bool(pred.any()):
        fb = None if fallback is None else _tensor(fallback)
        if fb is not None and bool(fb.any()):
            pred, source = fb.to(device=p.device, dtype=torch.bool), "template"
        else:
            return _like(torch.ones_like(pred), proba), "volume"
    if dilation > 0:
        ball = torch.as_tensor(_ball(dilation), dtype=torch.float32, device=p.device)[None, None]
        with torch.autocast(p.device.type, enabled=False):
            pred = torch.nn.functional.conv3d(pred[None, None].float(), ball, padding=dilation)[0, 0] > 0.5
    return _like(pred, proba), source


def _roi_mean(values, roi) -> float:
    v, r = _tensor(values), _tensor(roi).to(torch.bool)
    if tuple(r.shape) != tuple(v.shape):
        raise FairalError(f"ROI shape {tuple(r.shape)} differs from the probability map's {tuple(v.shape)}")
    if not bool(r.any()):
        raise FairalError("the ROI of the localized entropy is empty")
    return float(v[r.to(v.device)].mean())


def localized_entropy(proba, roi) -> float:
    """Eq. 1: ``H_hat = (1 / |R|) * sum_{v in R} H(v)``, the size-normalised entropy inside R."""
    return _roi_mean(voxel_entropy(_tensor(proba)), roi)


def mean_entropy(proba) -> float:
    """The ``entropy`` strategy's score: mean voxel entropy over the whole volume."""
    return float(voxel_entropy(_tensor(proba)).mean())


def localized_bald(mi, roi) -> float:
    """The ``bald`` score: mean voxel mutual information inside R (R from the deterministic prediction)."""
    return _roi_mean(mi, roi)


def k_center_greedy(features, labeled_features, k: int) -> list[int]:
    """Core-set (Sener & Savarese 2018), greedy k-center: ``k`` times the candidate farthest (Euclidean) from the
    labeled cases and the ones chosen so far (the first on a tie); their positions, in the order chosen."""
    x = np.asarray(features, dtype=np.float64)
    n = len(x)
    x = x.reshape(n, -1)
    lab = np.asarray(labeled_features, dtype=np.float64).reshape(-1, x.shape[1])
    dist = np.full(n, np.inf)
    for row in lab:  # one labeled case at a time: no (candidates x labeled x d) array
        dist = np.minimum(dist, np.linalg.norm(x - row, axis=1))
    chosen: list[int] = []
    for _ in range(min(k, n)):
        i = int(np.argmax(dist))
        chosen.append(i)
        dist = np.minimum(dist, np.linalg.norm(x - x[i], axis=1))
        dist[chosen] = -np.inf
    return chosen


def _core_set(view: PoolView) -> list[int]:
    return k_center_greedy(view.features, view.labeled_features, view.k)


#: The statistics behind the base scores, in record order: adding one is one entry (or :func:`register`).
STATISTICS: dict[str, Statistic] = {st.name: st for st in (
    Statistic("entropy", lambda m: mean_entropy(m.proba), "mean entropy"),
    Statistic("localized_entropy", lambda m: localized_entropy(m.proba, m.roi), "localized entropy"),
    Statistic("bald", lambda m: localized_bald(mutual_information(m.samples)[0], m.roi),
              "BALD (mutual information in the ROI)", needs_dropout=True),
    Statistic("fair_influence", None, "influence on the group gap", from_model=fair_influence),
)}

#: The strategy table: a base score per entry; strategy names, reasons, figure labels and the grid read it.
BASES: dict[str, Base] = {b.name: b for b in (
    Base("random", None, "random", "random draw"),
    Base("entropy", "entropy", "entropy", "mean entropy"),
    Base("localized-entropy", "localized_entropy", "localized entropy", "localized entropy"),
    Base("bald", "bald", "BALD", "BALD (mutual information in the ROI)"),
    Base("fair-influence", "fair_influence", "fairness influence",
         "expected reduction of the labeled set's group gap (first-order influence)", signed=True),
    Base("core-set", None, "core-set", "far from the labeled cases and the batch (greedy k-center)",
         pool=PoolScore("core_set", _core_set, "greedy k-center on the network's predicted maps", chooses=True)),
)}
#: The names built into fairal (the rest were registered: :mod:`fairal.plugins` sends those to a grid's workers).
BUILT_IN_STATISTICS = frozenset(STATISTICS)
BUILT_IN_BASES = frozenset(BASES)

_BASE_NAME = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")


def register(base: Base, statistic: Statistic | None = None) -> Base:
    """Add a base score (and the statistic it ranks by) to the tables: it is then a strategy name of the grammar
    (``[SELECTION-][STEERING-]NAME[-tT]``), computed every round for every candidate, written to the records as a
    column of its own and named in reasons and figures. Returns the base."""
    prefixes = tuple(p.prefix for p in (*STEERINGS.values(), *SELECTIONS.values()) if p.name)
    if not _BASE_NAME.match(base.name) or base.name.startswith(prefixes) or re.search(r"-t[0-9.]+$", base.name):
        raise FairalError(f"a base score's name is lower-case words joined by '-', without a prefix of the grammar "
                          f"({', '.join(prefixes)}) or a -tT suffix; got {base.name!r}")
    if base.name in BASES:
        raise FairalError(f"the base score {base.name!r} exists already")
    pools = {b.pool.name for b in BASES.values() if b.pool is not None}
    if base.pool is not None and (base.statistic is not None or statistic is not None or not
                                  base.pool.name.isidentifier() or base.pool.name in {*STATISTICS, *pools}):
        raise FairalError(f"base score {base.name!r}: a pool-wide score ranks by itself (no statistic), under a name "
                          f"of its own (an identifier no statistic or other pool-wide score has); got "
                          f"{base.pool.name!r}")
    if statistic is not None:
        if statistic.name in {*STATISTICS, *pools} or not statistic.name.isidentifier():
            raise FairalError(f"statistic {statistic.name!r} exists already or is not a column name")
        STATISTICS[statistic.name] = statistic
    if base.statistic is not None and base.statistic not in STATISTICS:
        raise FairalError(f"base score {base.name!r} ranks by an unknown statistic {base.statistic!r}")
    BASES[base.name] = base
    return base


def unregister(name: str) -> None:
    """Remove a base score added by :func:`register` (and its statistic when no other base uses it)."""
    base = BASES.pop(name)
    if base.statistic is not None and all(b.statistic != base.statistic for b in BASES.values()):
        STATISTICS.pop(base.statistic, None)


def case_statistics(maps: Iterable[CaseMaps], dropout: bool = False) -> dict[str, list[float]]:
    """The statistics of :data:`STATISTICS` that need MC-dropout samples (``dropout``) or that do not, for each
    case's maps, by statistic name."""
    chosen = {name: st for name, st in STATISTICS.items() if st.needs_dropout == dropout and not st.needs_model}
    out: dict[str, list[float]] = {name: [] for name in chosen}
    for m in maps:
        for name, st in chosen.items():
            out[name].append(float(st.compute(m)))
    return out


def proba_stats(probas, dilation: int, fallback=None) -> dict:
    """Per probability map (any iterable of (X, Y, Z) foreground probabilities, from any model, arrays or tensors):
    every statistic of :data:`fairal.acquisition.STATISTICS` that needs no MC dropout, in R = the predicted mask
    dilated by ``dilation`` voxels (``fallback`` when nothing is predicted), the ROI's source and the predicted
    voxels."""
    return plain_stats(probas, dilation, fallback, keep_rois=False)[0]


def plain_stats(probas, dilation: int, fallback, keep_rois: bool) -> tuple[dict, list]:
    """:func:`proba_stats`, and the ROIs when ``keep_rois`` (for the statistics that need MC-dropout samples)."""
    sources, voxels, rois = [], [], []

    def each() -> Iterator[CaseMaps]:
        for proba in probas:
            p = proba if isinstance(proba, torch.Tensor) else torch.from_numpy(np.asarray(proba))
            roi, source = roi_mask(p, dilation, fallback)
            sources.append(source)
            voxels.append(int((p > 0.5).sum()))
            if keep_rois:
                rois.append(roi)
            yield CaseMaps(p, roi)

    stats = case_statistics(each())
    return {**stats, "roi_source": sources, "predicted_voxels": voxels}, rois


def group_weights(
    dice: Sequence[float] | np.ndarray,
    groups: Sequence[Hashable] | np.ndarray,
    all_groups: Sequence[Hashable],
    temperature: float = 1.0,
    empty: Sequence[bool] | np.ndarray | None = None,
) -> dict:
    """The group weights of Eq. 2 (Section 3.2): ``z_g = (mean DSC_all - mean DSC_g) / std DSC_all``,
    ``w_g = softmax(z / T)_g``.

    ``dice``/``groups``: the trained model's Dice on each labeled case and its group (``None`` for a case whose
    group is unknown: it counts in ``DSC_all`` and its std, in no group). ``std`` is the population standard
    deviation over the labeled set. ``temperature`` T = 1 is the paper's softmax; any number of groups. Edge cases:

    - ``std = 0`` (all labeled cases segmented equally well, or one labeled case): equal weights.
    - a group of ``all_groups`` with no labeled case: its mean Dice is taken as the worst labeled case's Dice,
      so the group the model has never been trained on is favoured, but no more than the worst observed case.
    - ``empty`` (optional, per labeled case: its label map is empty): a group whose labeled cases all have an
      empty label is refused (:func:`refuse_empty_label_groups`), as ``fairal query`` and a study refuse it.
    """
    d = np.asarray(dice, dtype=np.float64)
    g = np.empty(len(groups), dtype=object)
    g[:] = list(groups)
    if d.size == 0:
        raise FairalError("group weights need at least one labeled case")
    if d.shape != g.shape:
        raise FairalError(f"{d.size} Dice values for {g.size} groups")
    if temperature <= 0:
        raise FairalError(f"the softmax temperature must be > 0, got {temperature}")
    groups_all = list(dict.fromkeys(all_groups))
    if not groups_all:
        raise FairalError("group weights need at least one group")
    stray = sorted({str(k) for k in g if k is not None and k not in groups_all})
    if stray:
        named = ", ".join(map(str, groups_all))
        raise FairalError(f"labeled cases of group(s) {', '.join(stray)} that all_groups ({named}) does not name "
                          "(a typo?)")
    if empty is not None:
        flags = np.asarray(empty, dtype=bool)
        if flags.shape != g.shape:
            raise FairalError(f"{flags.size} empty-label flags for {g.size} labeled cases")
        refuse_empty_label_groups(g, flags, [f"labeled case {i}" for i in range(g.size)])
    outside = ~np.isfinite(d) | (d < 0) | (d > 1 + 1e-6)  # (a Dice computed in float32 may end a hair above 1)
    if outside.any():
        raise FairalError(f"group weights need Dice values in [0, 1] (finite), got {d[outside][:3].tolist()}")
    overall, sd = float(d.mean()), float(d.std())
    if sd < 1e-12:
        return {k: 1.0 / len(groups_all) for k in groups_all}
    means = {k: float(d[g == k].mean()) if np.any(g == k) else float(d.min()) for k in groups_all}
    z = np.array([(overall - means[k]) / sd for k in groups_all]) / temperature
    e = np.exp(z - z.max())
    w = e / e.sum()
    return {k: float(v) for k, v in zip(groups_all, w, strict=True)}


def refuse_empty_label_groups(groups: Sequence[Hashable | None], empty: Sequence[bool], names: Sequence[str]
                              ) -> None:
    """Refuse a group whose labeled cases all have an empty label map (``groups``, ``empty`` and ``names``, e.g.
    the label files: one per labeled case; ``None``: group unknown, not checked). Its Dice would be the empty map's
    convention, 1 for an empty prediction and 0 for any other, whatever the model does, not how well it segments
    the group's structure; and that number would set the group's weight in Eq. 2 (and, in a study, its Dice, Δ
    and ESSP). A mistake far more often than a fact: a label not saved, a map of another structure."""
    flags = np.asarray(empty, dtype=bool)
    for group in dict.fromkeys(g for g in groups if g is not None):
        members = np.array([g == group for g in groups], dtype=bool)
        if flags[members].all():
            first = [n for n, m in zip(names, members, strict=True) if m][:3]
            raise FairalError(f"group {group}: every one of its {int(members.sum())} labeled case(s) has an empty "
                              f"label map ({', '.join(map(str, first))}{', ...' if members.sum() > 3 else ''}): its "
                              "Dice would be 1 for an empty prediction and 0 for any other, whatever the model does, "
                              "and would set the group's weight; check those labels (saved? the right structure or "
                              "label value?), or leave them empty to make the cases candidates")


def expected_weights(proba: np.ndarray, weights: Mapping[Hashable, float], order: Sequence[Hashable]) -> np.ndarray:
    """The weight of a case whose group is unknown: ``sum_g p(g|x) w_g``. ``proba`` is (n_cases, n_groups) with
    columns in ``order``; each row must sum to 1."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != len(order):
        raise FairalError(f"group probabilities must be (cases, {len(order)}), got {p.shape}")
    if p.size and (np.any(p < -1e-9) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-6)):
        raise FairalError("group probabilities must be >= 0 and sum to 1 for each case")
    w = np.array([weights[g] for g in order], dtype=np.float64)
    return p @ w


def case_weights(groups: Sequence[Hashable | None], weights: Mapping[Hashable, float],
                 p_group: np.ndarray | None = None, order: Sequence[Hashable] = ()) -> np.ndarray:
    """Each case's weight in Eq. 2: ``w_g`` of its group, or, for a case whose group is unknown (``None``), the
    expected weight ``sum_g p(g|x) w_g`` from its row of ``p_group`` (columns in ``order``)."""
    out = np.empty(len(groups), dtype=np.float64)
    unknown = [i for i, g in enumerate(groups) if g is None]
    missing = sorted({str(g) for g in groups if g is not None and g not in weights})
    if missing:
        raise FairalError(f"no group weight for group(s) {', '.join(missing)} (weights: "
                          f"{', '.join(map(str, weights)) or 'none'})")
    bad = {k: v for k, v in weights.items() if not (isinstance(v, (int, float, np.number)) and math.isfinite(v)
                                                   and v >= 0)}
    if bad:
        raise FairalError(f"group weights must be finite numbers >= 0, got {bad}")
    for i, g in enumerate(groups):
        if g is not None:
            out[i] = weights[g]
    if unknown:
        if p_group is None:
            raise FairalError("cases of unknown group need group probabilities for their expected weight")
        out[unknown] = expected_weights(np.asarray(p_group)[unknown], weights, order)
    return out


def strategy_scores(
    strategy: str | Strategy,
    stats: Mapping[str, Sequence[float]],
    weights: Sequence[float] | np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the pool cases under ``strategy`` and the group weight each case got (1 where unused).

    ``stats``: the per-case statistics of the round engine (``entropy``, ``localized_entropy``, ``bald``: one value
    per case); ``weights``: each case's group weight ``w_g(x)`` (the expected weight over the groups where a case's
    group is unknown). A ``random`` base draws from ``rng``. The score is the base times the weight for
    ``weighted-`` (Eq. 2); a steering that fills slots group by group ranks each group by the base alone."""
    s = parse_strategy(strategy)
    w = np.asarray(weights, dtype=np.float64)
    n = w.size
    key = s.spec.pool.name if s.spec.pool is not None else s.spec.statistic
    if key is None:
        base = rng.random(n)
    else:
        values = stats.get(key)
        if values is None or np.isnan(np.asarray(values, dtype=np.float64)).any():
            raise FairalError(f"strategy {s.name} needs the {_needs(s.spec)}")
        base = np.asarray(values, dtype=np.float64)
        if base.shape != (n,):
            raise FairalError(f"{base.size} values of {key} for {n} cases")
    if not s.steered:
        return base, np.ones(n)
    return (w * base if s.weighted else base), w  # Eq. 2 for weighted-


def _needs(base: Base) -> str:
    """What a base score needs of every pool case, in words."""
    if base.pool is not None:
        return (f"pool-wide score {base.pool.name!r} of the whole pool (computed from the network in fairal run, "
                "study or query, not from saved probabilities)")
    stat = STATISTICS.get(base.statistic)
    return f"statistic {base.statistic!r} of every pool case" + (f" ({stat.needs})" if stat and stat.needs else "")


def pool_values(pool: PoolScore, view: PoolView) -> np.ndarray:
    """``pool``'s value for each candidate of ``view``: its scores, or a chooser's batch as scores (the i-th of its
    k chosen cases (k - i) / k, the others 0), so that the top k are its batch in its order."""
    n = len(view.candidates)
    out = pool.compute(view)
    if not pool.chooses:
        values = np.asarray(out, dtype=np.float64)
        if values.shape != (n,) or not np.isfinite(values).all():
            raise FairalError(f"the pool-wide score {pool.name} gave {values.size} values for {n} candidates (one "
                              "finite number each)")
        return values
    chosen, k = [int(i) for i in out], min(view.k, n)
    if len(chosen) != k or len(set(chosen)) != k or any(not 0 <= i < n for i in chosen):
        raise FairalError(f"the pool-wide chooser {pool.name} must pick {k} distinct candidates (positions 0 to "
                          f"{n - 1}), got {chosen[:6]}")
    values = np.zeros(n)
    values[chosen] = (k - np.arange(k)) / k
    return values


def select_top_k(case_ids: Sequence[str], scores: Sequence[float], k: int) -> list[str]:
    """The ``k`` highest scores; ties broken by case id (ascending), so selection is deterministic."""
    return rank_cases(case_ids, scores)[: _check_k(k)]


def rank_cases(case_ids: Sequence[str], scores: Sequence[float]) -> list[str]:
    """All cases by descending score, ties by case id."""
    order = sorted(range(len(case_ids)), key=lambda i: (-float(scores[i]), str(case_ids[i])))
    return [case_ids[i] for i in order]


def power_order(case_ids: Sequence[str], scores: Sequence[float], rng: np.random.Generator,
                temperature: float = 1.0) -> list[str]:
    """An order of the cases drawn without replacement with probability proportional to ``score^(1/T)``: the
    cases by descending ``log(score) / T + G`` with ``G`` standard Gumbel noise (one draw per case, in the order
    given; the Gumbel-top-k trick, baal's PowerSampling). A score <= 0 comes last; ties by case id."""
    if not temperature > 0 or not math.isfinite(temperature):
        raise FairalError(f"the power temperature must be a finite number > 0, got {temperature!r}")
    s = np.asarray(scores, dtype=np.float64)
    if np.isnan(s).any():
        raise FairalError("power sampling needs a score for every case (found NaN)")
    noise = rng.gumbel(size=s.size)
    with np.errstate(divide="ignore"):
        keys = np.where(s > 0, np.log(np.where(s > 0, s, 1.0)) / temperature + noise, -np.inf)
    return rank_cases(case_ids, keys)


def ranking(case_ids: Sequence[str], scores: Sequence[float], selected: Sequence[str]) -> list[str]:
    """Every case: the ``selected`` ones first (in selection order), then the rest by descending score."""
    chosen = set(selected)
    return list(selected) + [c for c in rank_cases(case_ids, scores) if c not in chosen]


def _check_k(k: int) -> int:
    if k < 0:
        raise FairalError(f"cannot select {k} cases")
    return k


def stochastic_batch(
    case_ids: Sequence[str], scores: Sequence[float], k: int, n_batches: int, rng: np.random.Generator
) -> list[str]:
    """Gaillochet et al. (2023): draw ``n_batches`` random batches of ``k`` distinct cases and keep the one with
    the highest mean score (the first drawn on a tie); its cases in score order. Diversity comes from the random
    batches, informativeness from the score."""
    k = _check_k(k)
    n = len(case_ids)
    if n_batches < 1:
        raise FairalError(f"stochastic batches need at least one candidate batch, got {n_batches}")
    if k >= n:
        return rank_cases(case_ids, scores)
    if k == 0:
        return []
    s = np.asarray(scores, dtype=np.float64)
    batches = np.stack([rng.choice(n, size=k, replace=False) for _ in range(n_batches)])
    best = batches[int(np.argmax(s[batches].mean(axis=1)))]
    return rank_cases([case_ids[i] for i in best], s[best])


# --- steering by group: each group's cases in the selection's order, slots filled by the group weights ---------


def groups_by_weight(weights: Mapping[Hashable, float], present: Iterable[Hashable],
                     rng: np.random.Generator | None = None) -> list:
    """The groups that have candidates, by descending weight; groups of equal weight in a random order drawn from
    ``rng`` (one permutation, drawn only when two weights tie), else in the order of ``weights``."""
    here = set(present)
    keys = [g for g in weights if g in here]
    values = [float(weights[g]) for g in keys]
    tie = rng.permutation(len(keys)).tolist() if rng is not None and len(set(values)) < len(values) else \
        list(range(len(keys)))
    return sorted(keys, key=lambda g: (-float(weights[g]), tie[keys.index(g)]))


def worst_group_order(orders: Mapping[Hashable, list[str]], weights: Mapping[Hashable, float], k: int,
                      rng: np.random.Generator) -> list[str]:
    """Min-max (Abernethy et al. 2022): the group of the largest weight g* = argmax_g w_g, its cases in order;
    when g* has fewer than ``k``, the next group by weight fills the rest (``orders``: each group's cases in the
    selection's order, the groups in descending weight, as :func:`select` gives them)."""
    return [c for g in orders for c in orders[g]][:k]


def balanced_order(orders: Mapping[Hashable, list[str]], weights: Mapping[Hashable, float], k: int,
                   rng: np.random.Generator) -> list[str]:
    """Group-balanced interleaving (Branchaud-Charron et al. 2021): slots taken round-robin over the groups in
    descending weight, each group's next case in its order; an exhausted group is skipped."""
    queues = [list(orders[g]) for g in orders]
    out: list[str] = []
    while len(out) < k and any(queues):
        for q in queues:
            if q and len(out) < k:
                out.append(q.pop(0))
    return out


def group_drawn_order(orders: Mapping[Hashable, list[str]], weights: Mapping[Hashable, float], k: int,
                      rng: np.random.Generator) -> list[str]:
    """Each slot: a group drawn with probability proportional to its weight among the groups with cases left
    (``u = rng.random()``, the first group whose cumulative share exceeds ``u``, the groups in the order of
    ``orders``: descending weight; equal shares when all their weights are 0), then that group's next case."""
    queues = {g: list(orders[g]) for g in orders}
    out: list[str] = []
    while len(out) < k and any(queues.values()):
        left = [g for g, q in queues.items() if q]
        w = np.array([max(float(weights[g]), 0.0) for g in left])
        p = w / w.sum() if w.sum() > 0 else np.full(len(left), 1.0 / len(left))
        cum = np.cumsum(p)
        cum[-1] = 1.0  # (a sum that rounds below 1 never falls past the last group)
        g = left[int(np.searchsorted(cum, rng.random(), side="right"))]
        out.append(queues[g].pop(0))
    return out


def steering_groups(seen: Sequence[Hashable | None], p_group: np.ndarray | None, order: Sequence[Hashable]) -> list:
    """Each candidate's group for a steering that fills slots group by group: its own where the strategy sees it,
    else its most probable group under ``p_group`` (columns in ``order``; ties: the first); None where neither."""
    out = list(seen)
    for i, g in enumerate(seen):
        if g is None and p_group is not None and len(order):
            out[i] = order[int(np.argmax(np.asarray(p_group)[i]))]
    return out


def _top_order(case_ids: Sequence[str], scores: Sequence[float], rng: np.random.Generator, temperature: float
               ) -> list[str]:
    return rank_cases(case_ids, scores)


def _power(case_ids: Sequence[str], scores: Sequence[float], rng: np.random.Generator, temperature: float
           ) -> list[str]:
    return power_order(case_ids, scores, rng, temperature)


#: The group steerings of the strategy grammar: adding one is one entry.
STEERINGS: dict[str, Steering] = {st.name: st for st in (
    Steering("", ""),
    Steering("weighted", "weighted", scales_scores=True, by_value=True),
    Steering("worst-group", "worst-group", by_group=worst_group_order),
    Steering("balanced", "group-balanced", by_group=balanced_order),
    Steering("group-drawn", "group-drawn", by_group=group_drawn_order, by_value=True),
)}
#: The selection rules of the strategy grammar.
SELECTIONS: dict[str, Selection] = {sel.name: sel for sel in (
    Selection("", "", _top_order),
    Selection("stochastic", "stochastic batches of"),
    Selection("power", "power sampling of", _power),
)}


def select(
    strategy: str | Strategy, case_ids: Sequence[str], scores: Sequence[float], k: int, n_batches: int,
    rng: np.random.Generator, groups: Sequence[Hashable] | None = None,
    weights: Mapping[Hashable, float] | None = None, power_temperature: float = 1.0,
) -> list[str]:
    """The cases to annotate, best first: the top ``k`` scores, the best random candidate batch (``stochastic-``)
    or a power draw (``power-``); a steering by group (``worst-group-``, ``balanced-``, ``group-drawn-``) orders
    each group's cases (``groups``: each case's group) by the selection and fills the slots by the group
    ``weights`` (the groups in descending weight, a tie in a random order). ``rng`` draws, in this order, the tie's
    permutation (only on a tie), the power noise (one value per case, group by group), the groups' draws."""
    s = parse_strategy(strategy)
    k = _check_k(k)
    by_group = STEERINGS[s.steering].by_group
    if by_group is None:
        if s.stochastic:
            return stochastic_batch(case_ids, scores, k, n_batches, rng)
        return SELECTIONS[s.selection].order(case_ids, scores, rng, power_temperature)[:k]
    if groups is None or weights is None or len(groups) != len(case_ids):
        raise FairalError(f"strategy {s.name} needs each candidate's group and the group weights")
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    stray = sorted(str(g) for g in members if g not in weights)
    if stray:
        raise FairalError(f"strategy {s.name}: no group weight for group(s) {', '.join(stray)}")
    order = SELECTIONS[s.selection].order
    orders = {g: order([case_ids[i] for i in members[g]], [scores[i] for i in members[g]], rng, power_temperature)
              for g in groups_by_weight(weights, members, rng)}
    return by_group(orders, weights, k, rng)
