"""
=====================================================
Predictive uncertainty on heteroscedastic data
=====================================================

The network is a probabilistic mixture of experts: partition :math:`k` has a
gate :math:`\\pi_k(x)`, a polynomial mean :math:`\\mu_k(x)` and a noise
variance :math:`\\sigma_k^2`. After training, each :math:`\\sigma_k^2` is
estimated from the residuals of the prediction :math:`\\hat y`, weighted by
the partition's gate (and corrected for the expert's :math:`M` unknowns),

.. math::

    \\sigma_k^2 = \\frac{\\sum_d \\pi_k(x_d) \\left(y_d - \\hat y(x_d)\\right)^2}
                       {\\sum_d \\pi_k(x_d) - M},
    \\qquad
    \\operatorname{std}[y \\mid x] = \\sqrt{\\sum_k \\pi_k(x)
    \\left(\\sigma_k^2 + \\phi_k(x)^\\top C_k\\, \\phi_k(x)\\right)},

which ``predict(X, return_std=True)`` returns, with :math:`C_k` the
covariance of expert :math:`k`'s coefficients (Bayesian linear regression),
and, where the fit held rows out (``early_stopping``, the default with
``partitions="auto"``), a factor calibrated on them. (With the default
``polish=True`` the finest experts are fitted jointly, so their spread around
the mean is not counted as uncertainty; with ``polish=False`` it is added.)
The band follows noise that changes across the input space. The noise term
dominates where the data are plentiful; the coefficient term grows where an
expert is poorly determined.

Here the noise standard deviation grows from 0.02 at :math:`x = 0` to 0.4 at
:math:`x = 1`.

The default estimator, on these data, ends with the Bayesian root (one
polynomial under a prior chosen by the evidence, user guide "The Bayesian
root"), which models such noise otherwise: its noise variance is
:math:`\sigma^2 v(x)`, :math:`\log v` a low-degree polynomial fitted to its
leave-one-out errors where the Bayesian information criterion finds that
the noise varies.
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
# can vary from one partition to the next. Each partition's noise is
# estimated where its gate is large, and the gates blend the estimates: the
# default ``gate_alpha`` keeps the gates widely overlapping (smooth blends of
# the mean), which also blends the noise levels of neighbouring partitions
# over wide zones. Sharper gates (``gate_alpha=1e-4``) keep the noise
# estimate local. The band is drawn for the sharper fit; the lower panel
# compares its std with that of the same tree with default gates and that of
# the default estimator.
model = HierarchicalPOURegressor(
    partitions=(4, 2), degree=3, gate_alpha=1e-4, random_state=0
).fit(X, y)
default_gates = HierarchicalPOURegressor(
    partitions=(4, 2), degree=3, random_state=0
).fit(X, y)
default = HierarchicalPOURegressor(random_state=0).fit(X, y)

X_plot = np.linspace(0, 1, 500).reshape(-1, 1)
y_mean, y_std = model.predict(X_plot, return_std=True)
_, y_std_default = default_gates.predict(X_plot, return_std=True)
_, y_std_auto = default.predict(X_plot, return_std=True)

# Coverage of the +-2 std band on fresh data (about 95% for Gaussian noise).
X_new = rng.uniform(0, 1, (4000, 1))
y_new = mean_function(X_new[:, 0]) + noise_std(X_new[:, 0]) * rng.standard_normal(4000)
mean_new, std_new = model.predict(X_new, return_std=True)
coverage = np.mean(np.abs(y_new - mean_new) <= 2 * std_new)
print(f"fraction of new samples inside the +-2 std band: {coverage:.3f}")
mean_auto, std_auto = default.predict(X_new, return_std=True)
print("the same for the default estimator: "
      f"{np.mean(np.abs(y_new - mean_auto) <= 2 * std_auto):.3f}")

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
ax_std.plot(X_plot[:, 0], y_std, color="C3", label="predicted std, gate_alpha=1e-4")
ax_std.plot(
    X_plot[:, 0], y_std_default, color="C0", lw=1, label="predicted std, default gates"
)
ax_std.plot(X_plot[:, 0], y_std_auto, color="C2", lw=1, label="predicted std, default estimator")
ax_std.set_xlabel("x")
ax_std.set_ylabel("std")
ax_std.legend(loc="upper left")
fig.tight_layout()

# %%
# Both fits give the noise level's order of magnitude everywhere. With the
# default gates, the blended estimate is too large where the noise is small
# and too small at the noisy end; with ``gate_alpha=1e-4`` it follows the
# true noise closely. The price is a slightly less accurate mean (for a
# smooth target the default's smooth blends are more accurate): when the
# std matters, compare both settings on held-out data. The default
# estimator's noise shape follows the true noise without any setting.
plt.show()
