"""Statistics of score sets: separation figures, DET curves, the impostor tail and open-set predictions.

A list of N entries is searched by every face that passes: a passer-by who is on no list is falsely
matched when any of the N entries scores at or above the threshold. With p the chance that one impostor
pair does, and entries independent, that is 1 - (1 - p)^N. The data holds only so many impostor pairs, so p
at a threshold past the data comes from a model of the tail: a generalised Pareto distribution over the
scores above a high quantile (peaks over threshold), fitted by probability-weighted moments, with an
interval from a bootstrap over identities (pairs that share a person are not independent).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

TAIL_QUANTILE = 0.9  # the tail model covers the impostor scores above this quantile ...
MIN_EXCEEDANCES = 15  # ... or above a lower one, so that at least this many scores are in the tail
MIN_SCORES = 40
Z90 = 1.6449  # two-sided 90% normal quantile, for the Wilson interval


class TailFitError(Exception):
    """The score set is too small or too degenerate to fit a tail model; the message says why."""


@dataclass(frozen=True)
class Separation:
    """The figures issue 13 states for an evaluation set, at one threshold."""

    threshold: float
    genuine: int
    impostor: int
    genuine_min: float
    genuine_max: float
    genuine_below: int  # same-person pairs under the threshold
    impostor_max: float
    impostor_p99: float
    overlap: float  # impostor_max - genuine_min; > 0 means the ranges overlap
    lost_above_all_impostors: float  # share of same-person pairs at or below the highest impostor pair
    fmr: float  # share of impostor pairs at or above the threshold

    @property
    def impostor_hits(self) -> int:
        return round(self.fmr * self.impostor)


def separation(genuine: np.ndarray, impostor: np.ndarray, threshold: float) -> Separation:
    if not len(genuine) or not len(impostor):
        raise TailFitError(f"need same-person and different-person pairs (have {len(genuine)} and {len(impostor)})")
    top = float(impostor.max())
    return Separation(threshold, len(genuine), len(impostor), float(genuine.min()), float(genuine.max()),
                      int((genuine < threshold).sum()), top, float(np.percentile(impostor, 99)),
                      top - float(genuine.min()), float((genuine <= top).mean()),
                      float((impostor >= threshold).mean()))


def det_curve(genuine: np.ndarray, impostor: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false match rate, false non-match rate) at each threshold: impostor >= t, genuine < t."""
    imp, gen = np.sort(impostor), np.sort(genuine)
    fmr = 1.0 - np.searchsorted(imp, thresholds, side="left") / len(imp)
    fnmr = np.searchsorted(gen, thresholds, side="left") / len(gen)
    return fmr, fnmr


def wilson(hits: int, n: int, z: float = Z90) -> tuple[float, float]:
    """Wilson score interval of a proportion (90% by default): what the data alone bounds p to."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def passer_by(p: float | np.ndarray, n: int) -> float | np.ndarray:
    """Chance that at least one of n independent entries matches when each does with chance p."""
    out: float | np.ndarray = -np.expm1(n * np.log1p(-np.minimum(p, 1 - 1e-15)))
    return out


@dataclass(frozen=True)
class TailModel:
    """P(score >= t) for t above `u`: the share `zeta` of scores above u times a generalised Pareto survival
    (Hosking's parametrisation, shape k > 0 means a bounded tail ending at u + sigma / k)."""

    u: float
    zeta: float
    k: float
    sigma: float
    n: int  # scores the model was fitted on
    exceedances: int

    @property
    def endpoint(self) -> float:
        return self.u + self.sigma / self.k if self.k > 0 else math.inf

    def survival(self, t: float | np.ndarray) -> np.ndarray:
        """Modelled P(score >= t); for t <= u use the data, not this."""
        y = np.maximum(np.asarray(t, np.float64) - self.u, 0.0)
        if abs(self.k) < 1e-9:
            g = np.exp(-y / self.sigma)
        else:
            base = np.maximum(1 - self.k * y / self.sigma, 0.0)
            with np.errstate(divide="ignore"):
                g = np.power(base, 1 / self.k)
        out: np.ndarray = self.zeta * g
        return out


def fit_tail(scores: np.ndarray, quantile: float = TAIL_QUANTILE) -> TailModel:
    """Peaks over the `quantile` of `scores` (lowered for a small set to keep MIN_EXCEEDANCES in the tail),
    generalised Pareto by probability-weighted moments (Hosking and Wallis 1987: stable on small samples,
    unlike maximum likelihood)."""
    scores = np.asarray(scores, np.float64)
    if len(scores) < MIN_SCORES:
        raise TailFitError(f"{len(scores)} scores; the tail model needs at least {MIN_SCORES}")
    u = float(np.quantile(scores, min(quantile, 1 - MIN_EXCEEDANCES / len(scores))))
    y = np.sort(scores[scores > u] - u)
    if len(y) < MIN_EXCEEDANCES:
        raise TailFitError(f"{len(y)} scores above the {quantile:.0%} quantile ({u:.3f}) of {len(scores)}; "
                           f"the tail model needs at least {MIN_EXCEEDANCES}")
    p = (np.arange(1, len(y) + 1) - 0.35) / len(y)
    a0, a1 = float(y.mean()), float(np.mean((1 - p) * y))
    d = a0 - 2 * a1
    if d <= 0 or a0 <= 0:
        raise TailFitError(f"the scores above {u:.3f} do not fit a generalised Pareto tail (moments {a0:.4g}, "
                           f"{a1:.4g})")
    return TailModel(u, len(y) / len(scores), a0 / d - 2, 2 * a0 * a1 / d, len(scores), len(y))


@dataclass(frozen=True)
class TailEstimate:
    """P(impostor pair >= t) at one threshold: the data's count, and the model with its bootstrap interval."""

    threshold: float
    hits: int
    pairs: int
    model: float
    low: float
    high: float
    extrapolated: bool  # t is above the highest score in the data: only the model speaks there

    @property
    def empirical(self) -> float:
        return self.hits / self.pairs

    @property
    def data_interval(self) -> tuple[float, float]:
        return wilson(self.hits, self.pairs)


class TailBootstrap:
    """The tail model refitted on resamples of the identities (a cluster bootstrap: every pair of a person
    drawn twice counts twice, a person not drawn takes all their pairs away)."""

    def __init__(self, scores: np.ndarray, owners: np.ndarray, rounds: int = 400, seed: int = 0,
                 quantile: float = TAIL_QUANTILE):
        """`owners`: n x 2 identity indexes of each pair's two faces."""
        self.scores = np.asarray(scores, np.float64)
        self.owners = np.asarray(owners, np.int64).reshape(-1, 2)
        self.model = fit_tail(self.scores, quantile)
        self.quantile = quantile
        self.fits: list[TailModel] = []
        rng = np.random.default_rng(seed)
        ids = int(self.owners.max()) + 1 if len(self.owners) else 0
        for _ in range(rounds):
            counts = rng.multinomial(ids, np.full(ids, 1 / ids))
            weights = counts[self.owners[:, 0]] * counts[self.owners[:, 1]]
            sample = np.repeat(self.scores, weights)
            try:
                self.fits.append(fit_tail(sample, quantile))
            except TailFitError:
                continue  # a resample too small to fit: left out (counted in `failed`)
        self.failed = rounds - len(self.fits)

    def estimate(self, threshold: float, level: float = 0.9) -> TailEstimate:
        hits = int((self.scores >= threshold).sum())
        model = float(self.model.survival(threshold)) if threshold > self.model.u else hits / len(self.scores)
        if self.fits and threshold > self.model.u:
            boot = np.array([float(f.survival(threshold)) for f in self.fits])
            low, high = (float(v) for v in np.quantile(boot, [(1 - level) / 2, (1 + level) / 2]))
        else:
            low, high = wilson(hits, len(self.scores))
        return TailEstimate(threshold, hits, len(self.scores), model, low, high,
                            threshold > float(self.scores.max()))

    def passer_by(self, threshold: float, n: int, level: float = 0.9) -> tuple[float, float, float]:
        """Predicted chance a passer-by matches some entry of an n-entry list: model, low, high."""
        e = self.estimate(threshold, level)
        return (float(passer_by(e.model, n)), float(passer_by(e.low, n)), float(passer_by(e.high, n)))


def fnir_model(genuine: np.ndarray, tail: TailModel, impostor: np.ndarray, threshold: float, n: int,
               margin: float) -> float:
    """Predicted share of listed people missed on an n-entry list: their own entry is under the threshold, or
    one of the n - 1 others comes within `margin` of it (top-1 plus margin, as the node's matcher decides)."""
    imp = np.sort(np.asarray(impostor, np.float64))
    kept = 0.0
    for g in np.asarray(genuine, np.float64):
        if g < threshold:
            continue
        t = g - margin
        p = float(tail.survival(t)) if t > tail.u else 1 - np.searchsorted(imp, t, side="left") / len(imp)
        kept += float(1 - passer_by(p, n - 1)) if n > 1 else 1.0
    return 1 - kept / len(genuine)


def quantiles(values: Sequence[float], qs: Sequence[float]) -> list[float]:
    return [float(v) for v in np.quantile(np.asarray(values, np.float64), qs)]
