"""
===========================================================
A diode I-V curve spanning many orders of magnitude
===========================================================

Device models in circuit simulation must reproduce currents from picoamperes
to amperes with the same *relative* accuracy. Trask et al. (2022) fit the
I-V curve of a semiconductor device on a log-scaled target; here we do the
same for a Shockley diode with series resistance :math:`R_s`, whose current
solves :math:`I = I_s \\left(e^{(V - I R_s)/(n V_T)} - 1\\right)`. The
solution has a closed form through the Lambert W function:

.. math::

    I(V) = \\frac{n V_T}{R_s}\\,
           W\\!\\left(\\frac{I_s R_s}{n V_T}\\, e^{(V + I_s R_s)/(n V_T)}\\right) - I_s .

Between 0.05 V and 1 V the current grows from a few picoamperes to about
50 milliamperes, ten orders of magnitude: exponentially at low voltage, then
limited by the series resistance. A least-squares fit of :math:`I` itself only sees the large
currents: the small ones are below its absolute error. Fitting
:math:`\\log I` instead, with
:class:`~sklearn.compose.TransformedTargetRegressor`, gives a uniform
relative error over the whole range.
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
from scipy.special import lambertw
from sklearn.compose import TransformedTargetRegressor

from skpou import HierarchicalPOURegressor

QUICK = os.environ.get("SKPOU_EXAMPLES_QUICK") == "1"

I_S = 1e-12  # saturation current (A)
N_IDEALITY = 1.5
V_T = 0.02585  # thermal voltage at 300 K (V)
R_S = 1.0  # series resistance (ohm)


def diode_current(voltage):
    a = N_IDEALITY * V_T
    argument = I_S * R_S / a * np.exp((voltage + I_S * R_S) / a)
    return a / R_S * np.real(lambertw(argument)) - I_S


rng = np.random.default_rng(0)
n_samples = 300 if QUICK else 2000
V = np.sort(rng.uniform(0.05, 1.0, n_samples)).reshape(-1, 1)
current = diode_current(V[:, 0])
print(f"current spans {current.min():.1e} A to {current.max():.1e} A")

V_test = np.linspace(0.05, 1.0, 1000).reshape(-1, 1)
current_test = diode_current(V_test[:, 0])

# %%
# Two fits with the same network: on the current, and on its logarithm.
pou = HierarchicalPOURegressor(partitions=(4, 2), degree=4, random_state=0)
models = {
    "fit on I": pou,
    "fit on log I": TransformedTargetRegressor(
        regressor=pou, func=np.log, inverse_func=np.exp
    ),
}
predictions = {}
for name, model in models.items():
    predictions[name] = model.fit(V, current).predict(V_test)
    relative = np.abs(predictions[name] / current_test - 1)
    print(
        f"{name}: median relative error {np.median(relative):.1e}, "
        f"max {relative.max():.1e}"
    )

# %%
fig, (ax_iv, ax_err) = plt.subplots(2, 1, figsize=(7, 7), sharex=True)
ax_iv.semilogy(V_test[:, 0], current_test, color="0.6", lw=4, label="exact")
for (name, prediction), colour in zip(predictions.items(), ["C0", "C3"]):
    # a fit on I can go negative at low voltage: those points are not drawn
    shown = np.where(prediction > 0, prediction, np.nan)
    ax_iv.semilogy(V_test[:, 0], shown, color=colour, lw=1.5, label=name)
    ax_err.semilogy(
        V_test[:, 0], np.abs(prediction / current_test - 1), color=colour, label=name
    )
ax_iv.set_ylabel("current I (A)")
ax_iv.legend()
ax_iv.set_title("Shockley diode with series resistance")
ax_err.set_ylabel("relative error |I_pred / I - 1|")
ax_err.set_xlabel("voltage V (V)")
ax_err.legend()
fig.tight_layout()

# %%
# Both fits are accurate where the current is large. The fit on :math:`I`
# minimizes absolute errors, which are dominated by the large currents; at
# low voltage its errors (of the order of nanoamperes here) exceed the
# current itself, and the prediction can even go negative. The fit on
# :math:`\log I` is uniformly accurate in relative terms.
# ``TransformedTargetRegressor`` applies ``func`` to the targets before
# ``fit`` and ``inverse_func`` to the predictions, so it works with any
# regressor. The same holds for inputs spanning decades (a frequency, a
# concentration): transform them with
# :class:`~sklearn.preprocessing.FunctionTransformer` in a pipeline.
plt.show()
