"""Training data as the EM sees it: rows in a canonical order, scaled.

Inputs are mapped to [-1, 1] per feature and targets standardized, both
without overflow for values up to the float range (halves before
differences, magnitudes divided out before squares). Rows are sorted
lexicographically, so floating-point sums, and so the fit, do not depend on
how the caller ordered the rows, and equal rows end up next to each other.
"""

from dataclasses import dataclass

import numpy as np


# Weights beyond this many times the median are capped in the fit's
# auxiliary estimates (TrainingData.capped_weight).
WEIGHT_CAP = 10.0


class TrainingData:
    """Scaled training arrays, passed together through the EM steps.

    ``X`` (n, n_features), ``Y`` (n, n_targets), ``sample_weight`` (n,).
    Every row has positive weight: rows without weight are dropped first.
    """

    __slots__ = ("X", "Y", "sample_weight", "_n_distinct", "_capped_weight")

    def __init__(self, X, Y, sample_weight):
        self.X = np.ascontiguousarray(X)
        self.Y = np.ascontiguousarray(Y)
        self.sample_weight = sample_weight
        self._n_distinct = None
        self._capped_weight = None

    @property
    def capped_weight(self):
        """The sample weights capped at WEIGHT_CAP times their median (n,).

        What the fit's auxiliary estimates weigh rows by: the experts' local
        frames, the EM noise, the gates, the scale of the normal equations
        (and so of their ridge), and held-out errors. A row of huge weight
        says the fit must pass close to it, not that the noise is small
        everywhere, nor that the frames, which must span where the rows
        lie, should shrink onto it: uncapped, one weight 1e6 times the
        others' made partitions collapse and the fit lose its accuracy to
        round-off. The least-squares fits themselves use the full weights.
        """
        if self._capped_weight is None:
            w = self.sample_weight
            self._capped_weight = np.minimum(w, WEIGHT_CAP * np.median(w))
        return self._capped_weight

    @property
    def n_samples(self):
        return self.X.shape[0]

    @property
    def n_distinct(self):
        """Distinct input rows (rows in canonical order: equal ones adjacent).

        What decides how many unknowns the rows determine: neither repeating
        rows nor scaling weights changes it.
        """
        if self._n_distinct is None:
            self._n_distinct = _count_distinct(self.X)
        return self._n_distinct

    def rows(self, index):
        return TrainingData(self.X[index], self.Y[index], self.sample_weight[index])


@dataclass
class Scaling:
    """Affine maps of inputs to [-1, 1] and of targets to zero mean, unit std.

    ``x_offset``, ``x_scale`` (n_features,); ``y_offset``, ``y_scale``
    (n_targets,): x_scaled = (x - x_offset) / x_scale, likewise for y.
    """

    x_offset: np.ndarray
    x_scale: np.ndarray
    y_offset: np.ndarray
    y_scale: np.ndarray

    @classmethod
    def fit(cls, X, Y, sample_weight):
        magnitude = np.abs(Y).max(axis=0)
        unit = Y / np.where(magnitude > 0, magnitude, 1.0)
        offset = np.average(unit, axis=0, weights=sample_weight)
        spread = np.sqrt(
            np.average((unit - offset) ** 2, axis=0, weights=sample_weight)
        )
        return cls.from_statistics(X.min(axis=0), X.max(axis=0), magnitude, offset, spread)

    @classmethod
    def from_statistics(cls, low, high, magnitude, offset, spread):
        """The maps from per-column statistics of the rows of positive weight.

        ``low``, ``high`` (n_features,): the inputs' minima and maxima;
        ``magnitude`` (n_targets,): max |y|; ``offset``, ``spread``: the
        weighted mean and standard deviation of y / magnitude (with
        magnitude 1 where it is 0). Out-of-core fits (``skpou._dask``) reduce
        these over chunks.
        """
        half_range = high / 2.0 - low / 2.0
        magnitude = np.where(magnitude > 0, magnitude, 1.0)
        return cls(
            x_offset=low + half_range,
            x_scale=np.where(half_range > 0, half_range, 1.0),
            y_offset=offset * magnitude,
            # A constant target keeps its magnitude as scale (its standardized
            # values are 0), so the predictive std stays in proportion to it.
            y_scale=np.where(spread > 0, spread, 1.0) * magnitude,
        )

    def inputs(self, X):
        return (X - self.x_offset) / self.x_scale


def capped_total(data, threads):
    """The sum of ``TrainingData.capped_weight``, the scale of the normal
    equations and of their ridges; out of core, where rows are not capped
    (``skpou._dask.ChunkedTrainingData``), the weights' plain total."""
    capped = getattr(data, "capped_weight", None)
    return threads.total(data.sample_weight) if capped is None else float(capped.sum())


def prepare(X, Y, sample_weight, scaling=None):
    """Rows of positive weight, sorted, merged and scaled: (TrainingData,
    Scaling, number of distinct input rows).

    ``X`` (n, n_features), ``Y`` (n, n_targets), ``sample_weight`` (n,),
    validated and finite. ``scaling``: the maps to use (an out-of-core fit
    passes those of all rows with a subsample); by default, these rows'.

    - A row without weight takes no part in the fit, as if removed; kept,
      one far outside the weighted rows' box would overflow the bases there
      (0 * inf) and break the fit.
    - Rows are sorted lexicographically, and equal rows (inputs and targets)
      merged into one of their summed weight: a row repeated k times and a
      row of weight k then give the fit the same arrays, to the last bit,
      and no sum depends on the caller's row order.
    - Weights only count relative to each other: they are divided by the
      largest, so that neither subnormal weights nor sums of weights near
      the float range break the fit, and equal weights of any size become
      exactly 1 (the unweighted fit).
    """
    weighted = sample_weight > 0
    if not weighted.all():
        X, Y, sample_weight = X[weighted], Y[weighted], sample_weight[weighted]
    order = np.lexsort((*Y.T[::-1], *X.T[::-1]))
    X_scaled, Y_scaled, weight = X[order], Y[order], sample_weight[order]  # copies
    equal = (X_scaled[1:] == X_scaled[:-1]).all(axis=1) & (Y_scaled[1:] == Y_scaled[:-1]).all(axis=1)
    if equal.any():
        first = np.flatnonzero(np.r_[True, ~equal])
        weight = np.bincount(np.cumsum(np.r_[True, ~equal]) - 1, weights=weight)
        X_scaled, Y_scaled = X_scaled[first], Y_scaled[first]
    if weight.size:
        weight = weight / weight.max()
    n_distinct = _count_distinct(X_scaled)
    if scaling is None:  # with capped weights, as TrainingData.capped_weight says
        capped = np.minimum(weight, WEIGHT_CAP * np.median(weight))
        scaling = Scaling.fit(X_scaled, Y_scaled, capped)
    X_scaled -= scaling.x_offset
    X_scaled /= scaling.x_scale
    Y_scaled /= scaling.y_scale  # divided first: no overflow near the float range
    Y_scaled -= scaling.y_offset / scaling.y_scale
    return TrainingData(X_scaled, Y_scaled, weight), scaling, n_distinct


def _count_distinct(X_sorted):
    return int(X_sorted.shape[0] > 0) + int(
        np.count_nonzero((X_sorted[1:] != X_sorted[:-1]).any(axis=1))
    )


def em_subsample(data, size, random_state):
    """The rows the V-cycles see: all, or ``size`` of them drawn without
    replacement (kept in their order).

    Placing the partitions needs far fewer rows than fitting the experts
    does (as HistGradientBoosting bins on a subsample): the experts are
    refitted on every row afterwards. Out-of-core training data
    (``skpou._dask.ChunkedTrainingData``) were subsampled from their chunks
    when prepared: their ``em_data``.
    """
    drawn = getattr(data, "em_data", None)
    if drawn is not None:
        return drawn
    if size is None or data.n_samples <= size:
        return data
    return data.rows(np.sort(random_state.choice(data.n_samples, size, replace=False)))


def validation_split(data, fraction, max_rows, random_state):
    """Training and held-out rows: about a ``fraction`` of the rows held out,
    at most ``fraction * max_rows`` (None: no cap), at least one row each.

    Equal rows are held out together, and which ones only depends on their
    place among the distinct rows (which the canonical order fixes): rows
    repeated k times then split as one row of weight k does, so integer
    weights stay equivalent to repeated rows. Both parts keep the canonical
    row order.
    """
    distinct = np.r_[True, (data.X[1:] != data.X[:-1]).any(axis=1)
                     | (data.Y[1:] != data.Y[:-1]).any(axis=1)]
    group = np.cumsum(distinct) - 1
    n_groups = group[-1] + 1
    share = fraction
    if max_rows is not None and data.n_samples > max_rows:
        share = fraction * max_rows / data.n_samples
    held_out_group = random_state.random_sample(n_groups) < share
    if n_groups > 1 and not held_out_group.any():
        held_out_group[random_state.randint(n_groups)] = True
    if held_out_group.all():
        held_out_group[random_state.randint(n_groups)] = False
    held_out = held_out_group[group]
    return data.rows(~held_out), data.rows(held_out)
