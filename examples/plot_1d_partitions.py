"""
===================================================
Fitting a 1-D function and the learned partitions
===================================================

A hierarchical partition of unity network blends polynomial experts with
gate functions :math:`\\pi_k(x)` that are non-negative and sum to one at
every :math:`x`. This example fits the 1-D test function of Trask et al.
(2022),

.. math::

    f(x) = \\sin(2 \\pi x) + \\exp\\left(-\\frac{(x - 1/2)^2}{2 \\cdot 0.05^2}\\right),

a sine wave with a narrow bump, with a two-level tree: 4 coarse partitions,
each split into 3 children (12 fine partitions), and cubic experts.
:meth:`~skpou.HierarchicalPOURegressor.predict_partitions` returns the gates
of any level; they are drawn under the fit. The coarse gates are sums of
their children, so both levels describe the same tree.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from skpou import HierarchicalPOURegressor

QUICK = os.environ.get("SKPOU_EXAMPLES_QUICK") == "1"


def f(x):
    return np.sin(2 * np.pi * x) + np.exp(-(((x - 0.5) / 0.05) ** 2) / 2)


rng = np.random.default_rng(0)
n_samples = 400 if QUICK else 2000
X = rng.uniform(0, 1, (n_samples, 1))
y = f(X[:, 0])

model = HierarchicalPOURegressor(partitions=(4, 3), degree=3, random_state=0)
model.fit(X, y)

X_plot = np.linspace(0, 1, 1001).reshape(-1, 1)
y_true = f(X_plot[:, 0])
y_pred = model.predict(X_plot)
error = np.linalg.norm(y_pred - y_true) / np.linalg.norm(y_true)
print(f"relative L2 error on a fine grid: {error:.2e}")
print(f"V-cycles run: {model.n_iter_}, converged: {model.converged_}")

# %%
# The fit, its pointwise error, and the gates of both levels.
coarse = model.predict_partitions(X_plot, level=1)
fine = model.predict_partitions(X_plot, level=-1)

fig, axes = plt.subplots(
    4, 1, figsize=(7, 8), sharex=True, height_ratios=[3, 1.5, 1.5, 1.5]
)
axes[0].plot(X_plot[:, 0], y_true, color="0.6", lw=4, label="f(x)")
axes[0].plot(X_plot[:, 0], y_pred, color="C3", lw=1.5, label="POU network")
axes[0].set_ylabel("y")
axes[0].legend(loc="lower left")
axes[0].set_title(f"partitions=(4, 3), degree=3: relative L2 error {error:.1e}")

axes[1].semilogy(X_plot[:, 0], np.abs(y_pred - y_true), color="C3")
axes[1].set_ylabel("|error|")

# Children of coarse partition p are the fine columns 3 p, 3 p + 1, 3 p + 2:
# draw them in their parent's colour.
for p in range(4):
    axes[2].plot(X_plot[:, 0], coarse[:, p], color=f"C{p}")
    for j, style in enumerate(["-", "--", ":"]):
        axes[3].plot(X_plot[:, 0], fine[:, 3 * p + j], color=f"C{p}", ls=style)
axes[2].set_ylabel("level 1\n(4 gates)")
axes[3].set_ylabel("level 2\n(12 gates)")
axes[3].set_xlabel("x")
for ax in axes[2:]:
    ax.set_ylim(-0.05, 1.05)
fig.tight_layout()

# %%
# The partitions are not placed on a uniform grid: the gates concentrate
# where the function has most structure (around the bump at x = 1/2).
# Every row of ``predict_partitions`` sums to one, and each coarse gate
# is the sum of its children's gates:
print("rows sum to one:", np.allclose(fine.sum(axis=1), 1.0))
print(
    "coarse = sum of children:",
    np.allclose(coarse, fine.reshape(-1, 4, 3).sum(axis=2)),
)
plt.show()
