"""
=====================================================
Predictive uncertainty on heteroscedastic data
=====================================================

The network is a probabilistic mixture of experts: partition :math:`k` has a
gate :math:`\\pi_k(x)`, a polynomial mean :math:`\\mu_k(x)` and a noise
variance :math:`\\sigma_k^2`. Besides the mean
:math:`\\sum_k \\pi_k \\mu_k`, the mixture has a variance

.. math::

    \\operatorname{Var}[y \\mid x] = \\sum_k \\pi_k(x) \\left(\\sigma_k^2 + \\mu_k(x)^2\\right)
    - \\Big(\\sum_k \\pi_k(x) \\mu_k(x)\\Big)^2,

returned as a standard deviation by ``predict(X, return_std=True)``. Each
:math:`\\sigma_k` is refitted to the residuals of its own partition after
training, so the band follows noise that changes across the input space.
It measures the noise in the data (aleatoric uncertainty) plus the
disagreement of overlapping experts; it does not measure the uncertainty of
the fitted coefficients, so it does not widen away from the data.

Here the noise standard deviation grows from 0.02 at :math:`x = 0` to 0.4 at
:math:`x = 1`.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from skpou import HierarchicalPOURegressor

QUICK = os.environ.get("SKPOU_EXAMPLES_QUICK") == "1"


def mean_function(x):
    return np.sin(2 * np.pi * x) + x


def noise_std(x):
    return 0.02 + 0.38 * x**2


rng = np.random.default_rng(0)
n_samples = 1000 if QUICK else 5000
X = rng.uniform(0, 1, (n_samples, 1))
y = mean_function(X[:, 0]) + noise_std(X[:, 0]) * rng.standard_normal(n_samples)

# %%
# More partitions than the mean alone would need, so that the noise level
# can vary from one partition to the next. ``sigma="em"`` also lets each
# partition's noise enter the EM responsibilities during training.
# ``polish=False`` keeps every expert the fit of its own partition's data,
# which the per-partition noise estimates assume; the joint polish step
# refits the experts for the blended mean only, and currently inflates
# ``return_std`` (see the user guide).
model = HierarchicalPOURegressor(
    partitions=(4, 2), degree=3, sigma="em", polish=False, random_state=0
).fit(X, y)

X_plot = np.linspace(0, 1, 500).reshape(-1, 1)
y_mean, y_std = model.predict(X_plot, return_std=True)

# Coverage of the +-2 std band on fresh data (about 95% for Gaussian noise).
X_new = rng.uniform(0, 1, (4000, 1))
y_new = mean_function(X_new[:, 0]) + noise_std(X_new[:, 0]) * rng.standard_normal(4000)
mean_new, std_new = model.predict(X_new, return_std=True)
coverage = np.mean(np.abs(y_new - mean_new) <= 2 * std_new)
print(f"fraction of new samples inside the +-2 std band: {coverage:.3f}")

# %%
fig, (ax, ax_std) = plt.subplots(
    2, 1, figsize=(7, 6.5), sharex=True, height_ratios=[2, 1]
)
ax.scatter(X[:, 0], y, s=2, color="0.6", alpha=0.5, label="training data")
ax.plot(X_plot[:, 0], y_mean, color="C3", label="predicted mean")
ax.fill_between(
    X_plot[:, 0],
    y_mean - 2 * y_std,
    y_mean + 2 * y_std,
    color="C3",
    alpha=0.25,
    label="mean +- 2 predicted std",
)
ax.plot(X_plot[:, 0], mean_function(X_plot[:, 0]), "k--", lw=1, label="true mean")
ax.set_ylabel("y")
ax.legend(loc="lower left")
ax.set_title(f"coverage of the band on new data: {coverage:.1%}")

ax_std.plot(X_plot[:, 0], noise_std(X_plot[:, 0]), "k--", lw=1, label="true noise std")
ax_std.plot(X_plot[:, 0], y_std, color="C3", label="predicted std")
ax_std.set_xlabel("x")
ax_std.set_ylabel("std")
ax_std.legend(loc="upper left")
fig.tight_layout()
plt.show()
