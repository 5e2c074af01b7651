"""Test functions and data sets, all generated in code (no downloads).

Every problem is a deterministic function of its inputs; ``sample`` draws
inputs uniformly from the problem's domain with a seeded generator, so the
training, validation and test sets are independent draws.
"""

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.special import lambertw
from sklearn.datasets import make_friedman1, make_friedman2, make_friedman3


@dataclass(frozen=True)
class Problem:
    name: str
    n_features: int
    func: Callable  # X (n, d) -> y (n,)
    low: tuple
    high: tuple
    smooth: bool = True
    description: str = ""

    def sample(self, n, seed):
        rng = np.random.default_rng(seed)
        low = np.asarray(self.low, dtype=float)
        high = np.asarray(self.high, dtype=float)
        X = low + (high - low) * rng.random((int(n), self.n_features))
        return X, self.func(X)


# ----------------------------------------------------------------- 1-D paper


def sine_bump(X):
    x = X[:, 0]
    return np.sin(2 * np.pi * x) + np.exp(-(((x - 0.5) / 0.05) ** 2) / 2)


def triangle_wave_squared(pieces):
    """Piecewise quadratic with ``pieces`` quadratic pieces on [0, 1].

    tri(x) = |(pieces * x mod 2) - 1| is a triangle wave with a kink at every
    x = k / pieces; (2 tri - 1)^2 keeps every kink (peaks and troughs of the
    wave map to +-1, where the square's slope flips sign). Squaring tri
    itself would smooth the kinks where tri = 0 and halve the piece count.
    """

    def func(X):
        tri = np.abs(np.mod(pieces * X[:, 0], 2.0) - 1.0)
        return (2.0 * tri - 1.0) ** 2

    return func


# ------------------------------------------------------------ 2-D curve-aligned


def curve_coordinate(X):
    return X[:, 1] - (X[:, 0] - 0.5) ** 2


def curve_smooth(X):
    return np.tanh(curve_coordinate(X) / 0.1)


def curve_c0(X):
    return np.abs(curve_coordinate(X))


# ------------------------------------------------------------------ I-V curves

THERMAL_VOLTAGE = 0.025852  # kT/q at 300 K, volts


def diode_current(voltage, i_sat=1e-12, ideality=1.0, r_series=1.0):
    """Shockley diode with series resistance, solved exactly by Lambert W.

    I = I_s (exp((V - I R_s) / (n V_T)) - 1) has the closed form
    I = (n V_T / R_s) W(I_s R_s / (n V_T) exp((V + I_s R_s) / (n V_T))) - I_s.
    """
    nvt = ideality * THERMAL_VOLTAGE
    arg = (i_sat * r_series / nvt) * np.exp((voltage + i_sat * r_series) / nvt)
    return (nvt / r_series) * np.real(lambertw(arg)) - i_sat


def diode_iv(X):
    """Diode current over V in [0.1, 1.0] V (X in [0, 1]): ~1e-10 A to ~0.3 A."""
    return diode_current(0.1 + 0.9 * X[:, 0])


def ekv_drain_current(v_gs, v_ds, v_t0=0.5, slope=1.3, i_spec=1e-6):
    """EKV MOSFET drain current (long channel, source grounded).

    I_D = I_spec [F((V_P) / U_T) - F((V_P - V_DS) / U_T)] with the EKV
    interpolation F(v) = ln(1 + exp(v / 2))^2 and pinch-off V_P = (V_GS - V_T0) / n.
    Valid from weak to strong inversion: the current spans ~9 decades here.
    """
    v_p = (v_gs - v_t0) / slope

    def interp(v):
        return np.logaddexp(0.0, v / 2.0) ** 2

    u = THERMAL_VOLTAGE
    return i_spec * (interp(v_p / u) - interp((v_p - v_ds) / u))


def mosfet_iv(X):
    """EKV current over V_GS in [0, 1.8] V, V_DS in [0.02, 1.8] V (X in [0, 1]^2)."""
    return ekv_drain_current(1.8 * X[:, 0], 0.02 + 1.78 * X[:, 1])


# --------------------------------------------------------------- peer problems


def runge(X):
    return 1.0 / (1.0 + 25.0 * np.sum(X**2, axis=1))


def franke(X):
    x, y = X[:, 0], X[:, 1]
    return (
        0.75 * np.exp(-((9 * x - 2) ** 2) / 4 - ((9 * y - 2) ** 2) / 4)
        + 0.75 * np.exp(-((9 * x + 1) ** 2) / 49 - (9 * y + 1) / 10)
        + 0.5 * np.exp(-((9 * x - 7) ** 2) / 4 - ((9 * y - 3) ** 2) / 4)
        - 0.2 * np.exp(-((9 * x - 4) ** 2) - (9 * y - 7) ** 2)
    )


def tanh_cos_exp(X):
    return np.tanh(2 * X[:, 0] - 1) * np.cos(np.pi * X[:, 1]) * np.exp(-X[:, 2]) + 0.5 * X[:, 2]


def friedman1(X):
    return (
        10 * np.sin(np.pi * X[:, 0] * X[:, 1])
        + 20 * (X[:, 2] - 0.5) ** 2
        + 10 * X[:, 3]
        + 5 * X[:, 4]
    )


def friedman2(X):
    return np.sqrt(X[:, 0] ** 2 + (X[:, 1] * X[:, 2] - 1 / (X[:, 1] * X[:, 3])) ** 2)


def friedman3(X):
    return np.arctan((X[:, 1] * X[:, 2] - 1 / (X[:, 1] * X[:, 3])) / X[:, 0])


FRIEDMAN23_LOW = (0.0, 40 * np.pi, 0.0, 1.0)
FRIEDMAN23_HIGH = (100.0, 560 * np.pi, 1.0, 11.0)


def check_friedman_formulas():
    """Our closed forms agree with sklearn's make_friedman1/2/3 (noise=0)."""
    for maker, func, kwargs in (
        (make_friedman1, friedman1, {"n_features": 5}),
        (make_friedman2, friedman2, {}),
        (make_friedman3, friedman3, {}),
    ):
        X, y = maker(n_samples=200, noise=0.0, random_state=0, **kwargs)
        np.testing.assert_allclose(func(X), y, rtol=1e-12, atol=1e-12)


PROBLEMS = {
    p.name: p
    for p in [
        Problem("sine_bump_1d", 1, sine_bump, (0.0,), (1.0,),
                description="sin(2 pi x) + exp(-((x - 0.5) / 0.05)^2 / 2)"),
        Problem("runge_1d", 1, runge, (-1.0,), (1.0,),
                description="1 / (1 + 25 x^2) on [-1, 1]"),
        Problem("franke_2d", 2, franke, (0.0, 0.0), (1.0, 1.0),
                description="Franke's function on [0, 1]^2"),
        Problem("runge_2d", 2, runge, (-1.0, -1.0), (1.0, 1.0),
                description="1 / (1 + 25 |x|^2) on [-1, 1]^2"),
        Problem("tanh_cos_exp_3d", 3, tanh_cos_exp, (0.0,) * 3, (1.0,) * 3,
                description="tanh(2 x1 - 1) cos(pi x2) exp(-x3) + x3 / 2 on [0, 1]^3"),
        Problem("friedman2_4d", 4, friedman2, FRIEDMAN23_LOW, FRIEDMAN23_HIGH,
                description="make_friedman2, noise=0"),
        Problem("friedman3_4d", 4, friedman3, FRIEDMAN23_LOW, FRIEDMAN23_HIGH,
                description="make_friedman3, noise=0"),
        Problem("friedman1_5d", 5, friedman1, (0.0,) * 5, (1.0,) * 5,
                description="make_friedman1 with n_features=5, noise=0"),
        Problem("tri_wave_sq_12_1d", 1, triangle_wave_squared(12), (0.0,), (1.0,),
                smooth=False, description="squared triangle wave, 12 quadratic pieces"),
        Problem("curve_abs_2d", 2, curve_c0, (0.0, 0.0), (1.0, 1.0), smooth=False,
                description="|y - (x - 1/2)^2| on [0, 1]^2 (C0 across a parabola)"),
    ]
}
