"""
=====================================================
Multi-output regression with shared partitions
=====================================================

With a 2-D target ``y`` of shape ``(n_samples, n_outputs)``, one network fits
all outputs at once: the partitions (gates) are shared, and every partition
has one polynomial expert per output. The E-step weighs all outputs jointly,
so the partitions settle where the outputs *together* need resolution; each
output is standardized separately, so outputs on different scales count
equally.

Here the input is a curve parameter :math:`t \\in [0, 1]` and the two
outputs are the coordinates of a spiral whose radius and angular speed both
grow with :math:`t`:

.. math::

    x(t) = r(t) \\cos \\theta(t), \\quad y(t) = r(t) \\sin \\theta(t), \\quad
    r(t) = 0.2 + t, \\quad \\theta(t) = 6 \\pi t^2 .
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np

from skpou import HierarchicalPOURegressor

QUICK = os.environ.get("SKPOU_EXAMPLES_QUICK") == "1"


def spiral(t):
    radius = 0.2 + t
    angle = 6 * np.pi * t**2
    return np.column_stack([radius * np.cos(angle), radius * np.sin(angle)])


rng = np.random.default_rng(0)
n_samples = 500 if QUICK else 3000
t = rng.uniform(0, 1, (n_samples, 1))
Y = spiral(t[:, 0])  # shape (n_samples, 2)

model = HierarchicalPOURegressor(partitions=(4, 3), degree=3, random_state=0)
model.fit(t, Y)
print("n_outputs_:", model.n_outputs_)

t_plot = np.linspace(0, 1, 1000).reshape(-1, 1)
Y_true = spiral(t_plot[:, 0])
Y_pred = model.predict(t_plot)  # shape (1000, 2)
for k, name in enumerate(["x(t)", "y(t)"]):
    error = np.linalg.norm(Y_pred[:, k] - Y_true[:, k]) / np.linalg.norm(Y_true[:, k])
    print(f"{name}: relative L2 error {error:.2e}")

# %%
# The spiral in the plane, and the shared partitions in :math:`t`. The
# angle grows fastest near :math:`t = 1`, so the partitions are narrower
# there.
fig = plt.figure(figsize=(10, 4.5))
ax_curve = fig.add_subplot(1, 2, 1)
ax_curve.plot(Y_true[:, 0], Y_true[:, 1], color="0.6", lw=4, label="exact")
ax_curve.plot(Y_pred[:, 0], Y_pred[:, 1], color="C3", lw=1.2, label="POU network")
ax_curve.set_aspect("equal")
ax_curve.set_xlabel("x")
ax_curve.set_ylabel("y")
ax_curve.legend(loc="lower left", fontsize="small")

ax_out = fig.add_subplot(2, 2, 2)
ax_out.plot(t_plot[:, 0], Y_true, color="0.6", lw=3)
ax_out.plot(t_plot[:, 0], Y_pred[:, 0], color="C0", lw=1.2, label="x(t)")
ax_out.plot(t_plot[:, 0], Y_pred[:, 1], color="C1", lw=1.2, label="y(t)")
ax_out.legend(loc="lower left", fontsize="small")
ax_out.set_ylabel("outputs")

ax_gates = fig.add_subplot(2, 2, 4, sharex=ax_out)
ax_gates.plot(t_plot[:, 0], model.predict_partitions(t_plot))
ax_gates.set_xlabel("t")
ax_gates.set_ylabel("gates (12)")
fig.tight_layout()
plt.show()
