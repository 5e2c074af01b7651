"""
=============================================================
Adaptive resolution: partitions where the target needs them
=============================================================

With its defaults (``partitions="auto"``, ``degree="auto"``,
``gate_alpha="auto"``), :class:`~skpou.HierarchicalPOURegressor` chooses
its own resolution on held-out rows: it starts from the root or a small
uniform tree, then either splits the partitions that carry most of the
error (h-refinement) or raises every expert's degree (p-refinement),
whichever lowers the held-out error more per added unknown, and stops when
the held-out error stops improving (user guide, "Adaptive resolution").

The target here has a steep layer at :math:`x = 0.3` and a kink at
:math:`x = 0.7`,

.. math::

    f(x) = \\tanh\\big(100\\,(x - 0.3)\\big) + |x - 0.7|,

and is fitted without any tuning. The finest gates,
:meth:`~skpou.HierarchicalPOURegressor.predict_partitions`, show the
partitions gathering at the layer; ``refinement_path_`` lists every step
tried.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from skpou import HierarchicalPOURegressor

QUICK = os.environ.get("SKPOU_EXAMPLES_QUICK") == "1"


def f(x):
    return np.tanh(100 * (x - 0.3)) + np.abs(x - 0.7)


rng = np.random.default_rng(0)
n_samples = 500 if QUICK else 2000
X = rng.uniform(0, 1, (n_samples, 1))
y = f(X[:, 0])

model = HierarchicalPOURegressor(random_state=0)
model.fit(X, y)

X_plot = np.linspace(0, 1, 2001).reshape(-1, 1)
y_true = f(X_plot[:, 0])
y_pred = model.predict(X_plot)
error = np.linalg.norm(y_pred - y_true) / np.linalg.norm(y_true)
print(f"relative L2 error on a fine grid: {error:.2e}")
print(
    f"{model.n_partitions_} partitions of degree {model.degree_}, "
    f"gate_alpha_={model.gate_alpha_:g}, levels {model.partitions_}"
)

# %%
# The refinement path
# -------------------
# One row per step tried. ``start`` rows are the candidate start trees (the
# root, uniform trees, and, on the largest, sharp gates); ``h`` rows split
# the marked partitions, ``p`` rows raise the degree. ``kept`` marks the
# steps that improved on the best state so far; the fit ends with the last
# kept one. The validation error is the held-out mean squared error of the
# standardized target that the step was judged by.
print(f"{'kind':>5} {'partitions':>10} {'degree':>6} {'validation error':>16}  kept")
for step in model.refinement_path_:
    print(
        f"{step['kind']:>5} {step['n_partitions']:>10} {step['degree']:>6} "
        f"{step['validation_error']:>16.2e}  {'yes' if step['kept'] else ''}"
    )

# %%
# The fit, its error, and the finest partitions
# ---------------------------------------------
# Each finest gate is drawn in its own colour; a tick under the bottom
# panel marks its centre (the gate-weighted mean of x). The partitions are
# narrow at the layer, where the target changes fastest.
gates = model.predict_partitions(X_plot)  # (2001, finest partitions)
used = gates.max(axis=0) > 1e-3
gates = gates[:, used]
centres = (gates * X_plot).sum(axis=0) / gates.sum(axis=0)

fig, axes = plt.subplots(3, 1, figsize=(7, 7.5), sharex=True, height_ratios=[3, 1.5, 2])
axes[0].plot(X_plot[:, 0], y_true, color="0.6", lw=4, label="f(x)")
axes[0].plot(X_plot[:, 0], y_pred, color="C3", lw=1.2, label="default fit")
axes[0].set_ylabel("y")
axes[0].legend(loc="lower right")
axes[0].set_title(
    f"{model.n_partitions_} partitions, degree {model.degree_}: "
    f"relative L2 error {error:.1e}"
)

axes[1].semilogy(X_plot[:, 0], np.abs(y_pred - y_true) + 1e-17, color="C3")
axes[1].set_ylabel("|error|")

for k in range(gates.shape[1]):
    axes[2].plot(X_plot[:, 0], gates[:, k], color=f"C{k % 10}", lw=1)
axes[2].plot(centres, np.full_like(centres, -0.04), "|", color="k", ms=8)
axes[2].set_ylim(-0.08, 1.05)
axes[2].set_ylabel("finest gates")
axes[2].set_xlabel("x")
for ax in axes:
    for x_feature in (0.3, 0.7):
        ax.axvline(x_feature, color="0.8", lw=0.8, zorder=0)
fig.tight_layout()

# %%
# Held-out error against unknowns
# -------------------------------
# Every step tried, placed at its number of unknowns (partitions times basis
# functions, ``degree + 1`` in 1-D): h-steps move right by the few
# partitions they add, p-steps by one basis function per partition. The
# start trees' errors are those of the EM blend; the start tree is chosen,
# and the h and p steps of smooth gates are judged, after the polish.
fig, ax = plt.subplots(figsize=(6, 4))
for kind, marker in (("start", "s"), ("h", "o"), ("p", "^")):
    steps = [s for s in model.refinement_path_ if s["kind"] == kind]
    if not steps:
        continue
    unknowns = [s["n_partitions"] * (s["degree"] + 1) for s in steps]
    errors = [max(s["validation_error"], 1e-30) for s in steps]
    kept = [s["kept"] for s in steps]
    ax.loglog(unknowns, errors, marker, mfc="none", color="0.5", label=f"{kind} (tried)")
    ax.loglog(
        [u for u, k in zip(unknowns, kept) if k],
        [e for e, k in zip(errors, kept) if k],
        marker,
        color="C3",
        label=f"{kind} (kept)",
    )
ax.set_xlabel("unknowns")
ax.set_ylabel("held-out mean squared error")
ax.legend(fontsize="small")
fig.tight_layout()

# %%
# ``gate_alpha_`` reports whether the sharp gates tried on the start tree
# won: a target made of smooth pieces joined at a kink or a thin layer often
# prefers them. ``verbose=1`` prints the same path while the fit runs, with
# the seconds elapsed. For the paper's experiments, or to compare trees by
# cross-validation, pass a fixed tree instead (``partitions=(4, 4)``, say).
plt.show()
