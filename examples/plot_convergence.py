"""
=====================================================
Convergence in degree (p) and in partitions (h)
=====================================================

Two ways to refine a partition of unity network:

* **p-refinement**: keep the partitions and raise the polynomial degree of
  the experts. With ``warm_start=True`` and ``n_cycles=0``, a new ``fit``
  reuses the learned gates and only refits the experts (a set of small
  weighted least-squares problems), so a whole sequence of degrees costs
  little more than one fit. For a smooth target the error falls
  exponentially in the degree: a straight line on a semi-log plot.
* **h-refinement**: fit from scratch with more partitions at a fixed degree.
  For a smooth target and partitions that shrink uniformly, the error of
  degree-:math:`m` experts falls like :math:`N^{-(m+1)}` with the number
  :math:`N` of partitions (1-D): a straight line of slope :math:`-(m+1)`
  on a log-log plot, once the partitions resolve the function.

The target is the 1-D function of Trask et al. (2022), a sine wave plus a
narrow Gaussian bump.
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
n_samples = 500 if QUICK else 4000
X = rng.uniform(0, 1, (n_samples, 1))
y = f(X[:, 0])
X_test = np.linspace(0, 1, 2001).reshape(-1, 1)
y_test = f(X_test[:, 0])


def relative_error(model):
    return np.linalg.norm(model.predict(X_test) - y_test) / np.linalg.norm(y_test)


# %%
# p-refinement on frozen partitions
# ---------------------------------
# Learn 16 partitions (4 coarse, each split in 4) with linear experts, then
# switch to ``warm_start=True, n_cycles=0`` and raise the degree.
degrees = range(1, 5) if QUICK else range(1, 8)
model = HierarchicalPOURegressor(partitions=(4, 4), degree=1, random_state=0)
model.fit(X, y)
model.set_params(warm_start=True, n_cycles=0)
p_errors = []
for degree in degrees:
    model.set_params(degree=degree).fit(X, y)
    p_errors.append(relative_error(model))
    print(f"degree {degree}: relative L2 error {p_errors[-1]:.2e}")

# %%
# h-refinement: more partitions at fixed degree
# ---------------------------------------------
# Each point is a fresh fit with a single level of ``n`` partitions and the
# default settings. The gate penalty ``gate_alpha`` measures the sharpness
# of the transitions between partitions relative to their width, so its
# default keeps the transition zones in proportion as the partitions
# shrink, and the error keeps falling.
n_partitions = [2, 4, 8, 16] if QUICK else [2, 4, 8, 16, 32, 64]
h_degrees = [1, 2]
h_errors = {m: [] for m in h_degrees}
for m in h_degrees:
    for n in n_partitions:
        fitted = HierarchicalPOURegressor(partitions=(n,), degree=m, random_state=0)
        h_errors[m].append(relative_error(fitted.fit(X, y)))
        print(f"degree {m}, {n} partitions: relative L2 error {h_errors[m][-1]:.2e}")

# %%
fig, (ax_p, ax_h) = plt.subplots(1, 2, figsize=(10, 4))
ax_p.semilogy(list(degrees), p_errors, "o-")
ax_p.set_xticks(list(degrees))
ax_p.set_xlabel("expert degree (16 frozen partitions)")
ax_p.set_ylabel("relative L2 test error")
ax_p.set_title("p-refinement (warm_start=True, n_cycles=0)")
ax_p.grid(True, which="both", alpha=0.3)

for m in h_degrees:
    ax_h.loglog(n_partitions, h_errors[m], "o-", label=f"degree {m}")
    # reference slope -(m + 1) through the last point
    n_ref = np.array([n_partitions[-3], n_partitions[-1]], dtype=float)
    ax_h.loglog(
        n_ref,
        h_errors[m][-1] * (n_ref / n_ref[-1]) ** -(m + 1),
        "k:",
        lw=1,
    )
ax_h.set_xticks(n_partitions, [str(n) for n in n_partitions])
ax_h.minorticks_off()
ax_h.set_xlabel("number of partitions")
ax_h.set_title("h-refinement (dotted: slope -(degree + 1))")
ax_h.legend()
ax_h.grid(True, which="both", alpha=0.3)
fig.tight_layout()
plt.show()
