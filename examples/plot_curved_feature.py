"""
=====================================================
2-D partitions aligning with a curved feature
=====================================================

A function of one curvilinear coordinate,

.. math::

    u(x, y) = f(s), \\qquad s = y - (x - 1/2)^2, \\qquad f(s) = |s - 0.3|,

is smooth everywhere except across the parabola :math:`y = (x - 1/2)^2 + 0.3`,
where it has a kink (it is continuous, :math:`C^0`). A tensor-product grid
resolves that curve only by refining everywhere around it. The gates of a
partition of unity network are learned, so partition boundaries can move
onto the kink and the experts only see smooth pieces (Trask et al., 2022,
show this for a similar problem).

We fit two networks with 4 x 4 = 16 partitions and quadratic experts: with
``gate="linear"`` (softmax of affine logits: the boundary between two
siblings is a straight line) and with ``gate="quadratic"`` (boundaries are
conics, which can follow the parabola). Each panel colours every point by its
most probable finest partition and draws the kink in black.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from skpou import HierarchicalPOURegressor

QUICK = os.environ.get("SKPOU_EXAMPLES_QUICK") == "1"


def target(X):
    s = X[:, 1] - (X[:, 0] - 0.5) ** 2
    return np.abs(s - 0.3)


rng = np.random.default_rng(0)
n_samples = 1500 if QUICK else 8000
X = rng.uniform(0, 1, (n_samples, 2))
y = target(X)
X_test = rng.uniform(0, 1, (4000, 2))
y_test = target(X_test)

n_grid = 150
grid = np.linspace(0, 1, n_grid)
gx, gy = np.meshgrid(grid, grid)
X_grid = np.column_stack([gx.ravel(), gy.ravel()])
x_curve = np.linspace(0, 1, 200)
y_curve = (x_curve - 0.5) ** 2 + 0.3

# %%
models = {
    gate: HierarchicalPOURegressor(
        partitions=(4, 4), degree=2, gate=gate, random_state=0
    ).fit(X, y)
    for gate in ["linear", "quadratic"]
}

fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
image = axes[0].pcolormesh(gx, gy, target(X_grid).reshape(gx.shape), shading="auto")
fig.colorbar(image, ax=axes[0])
axes[0].set_title("target |s - 0.3|, s = y - (x - 1/2)^2")

# A fixed random colour per partition, so neighbours are distinguishable.
colours = plt.get_cmap("tab20")(np.random.default_rng(1).permutation(16) % 20)
for ax, (gate, model) in zip(axes[1:], models.items()):
    error = np.linalg.norm(model.predict(X_test) - y_test) / np.linalg.norm(y_test)
    print(f'gate="{gate}": relative L2 test error {error:.2e}')
    owner = model.predict_partitions(X_grid).argmax(axis=1).reshape(gx.shape)
    ax.imshow(
        colours[owner], origin="lower", extent=(0, 1, 0, 1), interpolation="nearest"
    )
    ax.set_title(f'gate="{gate}": error {error:.1e}')
for ax in axes:
    ax.plot(x_curve, y_curve, "k", lw=1.5)
    ax.set_xlabel("x")
    ax.set_aspect("equal")
axes[0].set_ylabel("y")
fig.tight_layout()

# %%
# On each side of the kink, :math:`|s - 0.3|` is a quadratic polynomial in
# :math:`(x, y)`, so quadratic experts are exact once a partition boundary
# follows the parabola. Quadratic gates can draw such a boundary, and the
# partitions line up with the kink; affine gates approximate it by straight
# segments, and the experts must absorb the kink near them, so the error is
# larger. (A partition that ends up with no data at all is pruned, with a
# warning: fewer partitions would give the same model.) With the default
# ``gate_alpha`` the gates stay smooth, so neighbouring experts still blend
# across the kink; a tiny ``gate_alpha`` (say ``1e-20``, with more cycles
# and ``tol=0``) lets them sharpen, which exact reproduction of piecewise
# polynomials needs.
plt.show()
