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


# --------------------------------------------------- surrogate test functions
#
# Closed forms and input ranges as given by S. Surjanovic and D. Bingham,
# "Virtual Library of Simulation Experiments: Test Functions and Datasets",
# Simon Fraser University, https://www.sfu.ca/~ssurjano/ (pages borehole,
# otlcircuit, piston, wingweight; the functions go back to Harper and Gupta
# 1983 (borehole), Ben-Ari and Steinberg 2007 (OTL circuit, piston) and
# Forrester, Sobester and Keane 2008 (wing weight)). Inputs are sampled
# uniformly on the ranges below, in physical units.


def borehole(X):
    """Water flow through a borehole (8-D), m^3/yr."""
    rw, r, tu, hu, tl, hl, length, kw = X.T
    log_ratio = np.log(r / rw)
    return (2 * np.pi * tu * (hu - hl)) / (
        log_ratio * (1 + 2 * length * tu / (log_ratio * rw**2 * kw) + tu / tl)
    )


BOREHOLE_LOW = (0.05, 100.0, 63070.0, 990.0, 63.1, 700.0, 1120.0, 9855.0)
BOREHOLE_HIGH = (0.15, 50000.0, 115600.0, 1110.0, 116.0, 820.0, 1680.0, 12045.0)


def otl_circuit(X):
    """Midpoint voltage of an output transformerless push-pull circuit (6-D), V."""
    rb1, rb2, rf, rc1, rc2, beta = X.T
    vb1 = 12 * rb2 / (rb1 + rb2)
    gain = beta * (rc2 + 9)
    return ((vb1 + 0.74) * gain / (gain + rf) + 11.35 * rf / (gain + rf)
            + 0.74 * rf * gain / ((gain + rf) * rc1))


OTL_LOW = (50.0, 25.0, 0.5, 1.2, 0.25, 50.0)
OTL_HIGH = (150.0, 70.0, 3.0, 2.5, 1.2, 300.0)


def piston(X):
    """Cycle time of a piston in a cylinder (7-D), s."""
    m, s, v0, k, p0, ta, t0 = X.T
    a = p0 * s + 19.62 * m - k * v0 / s
    v = s / (2 * k) * (np.sqrt(a**2 + 4 * k * p0 * v0 * ta / t0) - a)
    return 2 * np.pi * np.sqrt(m / (k + s**2 * p0 * v0 * ta / (t0 * v**2)))


PISTON_LOW = (30.0, 0.005, 0.002, 1000.0, 90000.0, 290.0, 340.0)
PISTON_HIGH = (60.0, 0.020, 0.010, 5000.0, 110000.0, 296.0, 360.0)


def wing_weight(X):
    """Weight of a light aircraft wing (10-D), lb; the sweep angle is in degrees."""
    sw, wfw, aspect, sweep_deg, q, taper, tc, nz, wdg, wp = X.T
    cos_sweep = np.cos(np.deg2rad(sweep_deg))
    return (0.036 * sw**0.758 * wfw**0.0035 * (aspect / cos_sweep**2) ** 0.6
            * q**0.006 * taper**0.04 * (100 * tc / cos_sweep) ** -0.3
            * (nz * wdg) ** 0.49 + sw * wp)


WING_LOW = (150.0, 220.0, 6.0, -10.0, 16.0, 0.5, 0.08, 2.5, 1700.0, 0.025)
WING_HIGH = (200.0, 300.0, 10.0, 10.0, 45.0, 1.0, 0.18, 6.0, 2500.0, 0.08)


def rosenbrock(X):
    """sum_i 100 (x_{i+1} - x_i^2)^2 + (x_i - 1)^2: a quartic polynomial."""
    return np.sum(100 * (X[:, 1:] - X[:, :-1] ** 2) ** 2 + (X[:, :-1] - 1) ** 2, axis=1)


# ------------------------------------------- resolution: kinks, jumps, peaks

PWL_KNOTS = (0.0, 0.17, 0.38, 0.55, 0.79, 1.0)
PWL_VALUES = (0.0, 1.0, 0.4, 1.3, -0.2, 0.5)


def piecewise_linear(X):
    """Continuous piecewise-linear interpolant of PWL_VALUES at PWL_KNOTS
    (five pieces, kinks at irregular positions)."""
    return np.interp(X[:, 0], PWL_KNOTS, PWL_VALUES)


def jump_across_curve(X):
    """sin(x0) + 1[x1 > 0.3 + 0.2 sin(4 x0)] on [0, 1]^2: a unit jump across a curve."""
    return np.sin(X[:, 0]) + (X[:, 1] > 0.3 + 0.2 * np.sin(4 * X[:, 0]))


PEAK_HEIGHT = 4.0


def heat_capacity_peak(X):
    """c(T, p) = 1 + A / (1 + ((T - Tc(p)) / w(p))^2) on [0, 1]^2, with
    T = x0, p = x1, A = 4, Tc(p) = 0.3 + 0.4 p and w(p) = 0.01 + 0.04 p.

    A Lorentzian ridge along the line T = Tc(p), narrowest (half width 0.01,
    about the sample spacing at n = 1e4) at p = 0 and widening fivefold at
    p = 1: it mimics the isobaric heat capacity of a fluid near its
    pseudo-critical line, sharpest near the critical pressure.
    """
    t, p = X[:, 0], X[:, 1]
    width = 0.01 + 0.04 * p
    return 1.0 + PEAK_HEIGHT / (1.0 + ((t - (0.3 + 0.4 * p)) / width) ** 2)


def sine_exp_1d(X):
    return np.sin(2 * np.pi * X[:, 0]) * np.exp(-X[:, 0])


def sine_cosine_2d(X):
    return np.sin(3 * X[:, 0]) * np.cos(2 * X[:, 1])


def abs_sum_2d(X):
    return np.abs(X[:, 0] - 0.37) + np.abs(X[:, 1] - 0.61)


def sine_cosine_fast_2d(X):
    return np.sin(8 * X[:, 0]) * np.cos(6 * X[:, 1])


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
        Problem("otl_circuit_6d", 6, otl_circuit, OTL_LOW, OTL_HIGH,
                description="OTL circuit midpoint voltage (Surjanovic & Bingham)"),
        Problem("piston_7d", 7, piston, PISTON_LOW, PISTON_HIGH,
                description="piston cycle time (Surjanovic & Bingham)"),
        Problem("borehole_8d", 8, borehole, BOREHOLE_LOW, BOREHOLE_HIGH,
                description="borehole water flow (Surjanovic & Bingham)"),
        Problem("wing_weight_10d", 10, wing_weight, WING_LOW, WING_HIGH,
                description="light aircraft wing weight (Surjanovic & Bingham)"),
        Problem("rosenbrock_4d", 4, rosenbrock, (-2.048,) * 4, (2.048,) * 4,
                description="Rosenbrock, sum_i 100 (x_{i+1} - x_i^2)^2 + (x_i - 1)^2, "
                "on [-2.048, 2.048]^4 (quartic)"),
        Problem("pwl_1d", 1, piecewise_linear, (0.0,), (1.0,), smooth=False,
                description="continuous piecewise linear, kinks at 0.17, 0.38, 0.55, 0.79"),
        Problem("jump_2d", 2, jump_across_curve, (0.0, 0.0), (1.0, 1.0), smooth=False,
                description="sin(x0) + 1[x1 > 0.3 + 0.2 sin(4 x0)] on [0, 1]^2 (jump across a curve)"),
        Problem("heat_peak_2d", 2, heat_capacity_peak, (0.0, 0.0), (1.0, 1.0),
                description="1 + 4 / (1 + ((x0 - 0.3 - 0.4 x1) / (0.01 + 0.04 x1))^2) "
                "on [0, 1]^2 (narrow ridge)"),
        Problem("sine_exp_1d", 1, sine_exp_1d, (0.0,), (1.0,),
                description="sin(2 pi x0) exp(-x0) on [0, 1]"),
        Problem("sine_cosine_2d", 2, sine_cosine_2d, (0.0, 0.0), (1.0, 1.0),
                description="sin(3 x0) cos(2 x1) on [0, 1]^2"),
        Problem("abs_sum_2d", 2, abs_sum_2d, (0.0, 0.0), (1.0, 1.0), smooth=False,
                description="|x0 - 0.37| + |x1 - 0.61| on [0, 1]^2"),
        Problem("sine_cosine_fast_2d", 2, sine_cosine_fast_2d, (0.0, 0.0), (1.0, 1.0),
                description="sin(8 x0) cos(6 x1) on [0, 1]^2"),
    ]
}
