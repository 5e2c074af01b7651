"""Suite "paper": reproduce the demonstrations of doc/design.md section 5.

Trask, Henriksen, Martinez, Cyr, "Hierarchical partition of unity networks:
fast multilevel training", PMLR 190 (2022). Each experiment is regenerated
from its formula; the paper's figure is quoted beside ours.
"""

import numpy as np
from sklearn.compose import TransformedTargetRegressor

from skpou import HierarchicalPOURegressor

from . import problems as P
from ._common import fmt_err, fmt_time, hpou_supports, rel_l2, save_figure, timed
from .baselines import PiecewisePolynomialGrid

SETTINGS = {
    # quick mode: smaller samples and fewer sizes, same experiments
    True: dict(n_1d=2000, n_2d=4000, n_test=5000, pieces=(6, 12),
               curve_parts=(4, 16), curve_degrees=(1,), dg_grid=(1, 2, 4, 8, 16, 32)),
    False: dict(n_1d=10000, n_2d=20000, n_test=20000, pieces=(6, 12, 24),
                curve_parts=(4, 16, 64), curve_degrees=(1, 2),
                dg_grid=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32)),
}


def _fit_eval(make, X, y, Xt, yt, repeats):
    seconds, model = timed(lambda: make().fit(X, y), repeats)
    return model, rel_l2(model.predict(Xt), yt), seconds


def _n_iter(model):
    inner = getattr(model, "regressor_", model)
    return getattr(inner, "n_iter_", "n/a")


def _two_level(k):
    """A two-level tree with k fine partitions: (k/4, 4) if k >= 8, else (k,)."""
    return (k // 4, 4) if k >= 8 and k % 4 == 0 else (k,)


def run(report, quick, repeats, out_dir):
    cfg = SETTINGS[quick]
    rows = []  # the summary table
    import matplotlib.pyplot as plt

    # ------------------------------------------------ 1. sine + bump, (15,3) vs (45,)
    prob = P.PROBLEMS["sine_bump_1d"]
    X, y = prob.sample(cfg["n_1d"], seed=0)
    Xt, yt = prob.sample(cfg["n_test"], seed=1)
    sine = {}
    gates = [("linear", {}), ("mlp", dict(gate="mlp", random_state=0))]
    for gate_label, extra in gates:
        for parts, paper in (((15, 3), "~1e-3"), ((45,), "~1.5e-2")):
            model, err, sec = _fit_eval(
                lambda: HierarchicalPOURegressor(partitions=parts, degree=1, **extra),
                X, y, Xt, yt, repeats,
            )
            sine[(parts, gate_label)] = (model, err)
            rows.append((f"sine+bump {parts} degree 1, {gate_label} gate", paper,
                         fmt_err(err), _n_iter(model), fmt_time(sec), f"n={len(X)}"))

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    grid = np.linspace(0, 1, 2000)[:, None]
    ax[0].plot(grid[:, 0], P.sine_bump(grid), "k-", lw=1, label="truth")
    for (parts, gate_label), (model, err) in sine.items():
        label = f"{parts} {gate_label}"
        ax[0].plot(grid[:, 0], model.predict(grid), "--", lw=1,
                   label=f"{label}: rel L2 {err:.1e}")
        ax[1].plot(np.arange(1, len(model.loss_curve_) + 1), model.loss_curve_,
                   "o-", ms=3, label=label)
    ax[0].set_title("sine + bump, degree 1")
    ax[0].legend(fontsize=7)
    ax[1].set_xlabel("V-cycle")
    ax[1].set_ylabel("loss_curve_ (training objective)")
    ax[1].legend(fontsize=7)
    save_figure(fig, out_dir, _name("paper_sine_bump", quick), report)

    # ------------------------------------------------ 2. p-refinement on frozen partitions
    # gate_alpha (when the estimator has it) trades smooth blends for sharp
    # partitions; the piecewise experiments run both the default and the
    # documented exact-reproduction setting: sharp gates (1e-20) trained to
    # convergence (60 cycles, tol=0).
    variants = [("default", {})]
    if hpou_supports("gate_alpha"):
        variants.append((
            "gate_alpha=1e-20, 60 cycles",
            dict(gate_alpha=1e-20, n_cycles=60, tol=0.0),
        ))
    # p-refinement also runs with moderately sharp partitions, the setting
    # that reaches the paper's degree-6 figure.
    pref_variants = list(variants)
    if hpou_supports("gate_alpha"):
        pref_variants.append(("gate_alpha=1e-4", dict(gate_alpha=1e-4)))
    degrees = range(1, 7)
    pref = {}
    first = {}
    pref_rows = []
    for variant, extra in pref_variants:
        for k in (2, 4, 8, 16):
            model, err1, sec1 = _fit_eval(
                lambda: HierarchicalPOURegressor(partitions=(k,), degree=1, **extra),
                X, y, Xt, yt, repeats,
            )
            first[(k, variant)] = (_n_iter(model), sec1)
            errs, refit_times = [err1], []
            for d in degrees[1:]:
                sec, _ = timed(
                    lambda: model.set_params(degree=d, warm_start=True, n_cycles=0).fit(X, y),
                    1,
                )
                refit_times.append(sec)
                errs.append(rel_l2(model.predict(Xt), yt))
            pref[(k, variant)] = errs
            pref_rows.append(
                [f"({k},)", variant, fmt_time(sec1)]
                + [fmt_err(e) for e in errs]
                + [fmt_time(float(np.median(refit_times)))]
            )
    report.add(
        "p-refinement on frozen partitions (sine + bump)",
        "Fit degree 1 (default n_cycles/tol), then for degree 2..6 "
        "`set_params(degree=d, warm_start=True, n_cycles=0).fit(X, y)`: the "
        "gates learned at degree 1 stay fixed, only the experts are refitted. "
        f"n_train={len(X)}, n_test={len(Xt)}. Paper: 16 partitions, ~4e-3 at "
        "degree 1 down to ~1.5e-8 at degree 6.",
        (["partitions", "settings", "degree-1 fit"] + [f"deg {d}" for d in degrees]
         + ["refit time (median)"], pref_rows),
    )
    for variant, _ in pref_variants:
        rows.append((f"p-refinement (16,) degree 1, {variant}", "~4e-3",
                     fmt_err(pref[(16, variant)][0]), first[(16, variant)][0],
                     fmt_time(first[(16, variant)][1]), "partitions learned at degree 1"))
        rows.append((f"p-refinement (16,) degree 6, {variant}", "~1.5e-8",
                     fmt_err(pref[(16, variant)][-1]), 0, "", "experts refitted only"))
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for (k, variant), errs in pref.items():
        ax.semilogy(list(degrees), errs, "o-" if variant == "default" else "s--",
                    label=f"{k} partitions, {variant}")
    ax.semilogy([1, 6], [4e-3, 1.5e-8], "k:", label="paper, 16 partitions")
    ax.set_xlabel("expert degree (partitions frozen after degree 1)")
    ax.set_ylabel("relative L2 test error")
    ax.legend(fontsize=6)
    save_figure(fig, out_dir, _name("paper_p_refinement", quick), report)

    # ------------------------------------------------ 3. squared triangle waves
    tri_best = {}
    fig, axes = plt.subplots(1, len(cfg["pieces"]), figsize=(4 * len(cfg["pieces"]), 3))
    for ax, pieces in zip(np.atleast_1d(axes), cfg["pieces"]):
        func = P.triangle_wave_squared(pieces)
        prob = P.Problem(f"tri{pieces}", 1, func, (0.0,), (1.0,))
        Xw, yw = prob.sample(cfg["n_1d"], seed=0)
        Xwt, ywt = prob.sample(cfg["n_test"], seed=1)
        ax.plot(grid[:, 0], func(grid), "k-", lw=1, label="truth")
        for variant, extra in variants:
            for parts in ((2 * pieces,), (pieces, 2)):
                model, err, sec = _fit_eval(
                    lambda: HierarchicalPOURegressor(partitions=parts, degree=2, **extra),
                    Xw, yw, Xwt, ywt, repeats,
                )
                if err < tri_best.get(pieces, (np.inf,))[0]:
                    tri_best[pieces] = (err, f"{parts}, {variant}")
                rows.append((f"triangle wave^2, {pieces} pieces, {parts} deg 2, {variant}",
                             "~1e-8", fmt_err(err), _n_iter(model), fmt_time(sec),
                             f"n={len(Xw)}"))
                ax.plot(grid[:, 0], model.predict(grid), "--", lw=1,
                        label=f"{parts} {variant}: {err:.1e}")
        ax.set_title(f"squared triangle wave, {pieces} pieces")
        ax.legend(fontsize=6)
    save_figure(fig, out_dir, _name("paper_triangle_waves", quick), report)
    for pieces in (6, 12):
        if pieces in tri_best:
            err, where = tri_best[pieces]
            report.target(
                f"triangle wave^2, {pieces} pieces",
                "rel L2 < 1e-8 (best of (2P,), (P, 2) x gate settings, degree 2)",
                f"{fmt_err(err)} ({where})",
                err < 1e-8,
            )

    # ------------------------------------------------ 4. curve-aligned 2-D vs DG grid
    curve_rows = []
    curves = (("tanh(s/0.1)", P.curve_smooth), ("|s|", P.curve_c0))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for ax, (label, func) in zip(axes, curves):
        prob = P.Problem(label, 2, func, (0.0, 0.0), (1.0, 1.0))
        X2, y2 = prob.sample(cfg["n_2d"], seed=0)
        X2t, y2t = prob.sample(cfg["n_test"], seed=1)
        for degree in cfg["curve_degrees"]:
            dg = {}
            n_basis = (degree + 1) * (degree + 2) // 2
            for g in cfg["dg_grid"]:
                if g * g * 5 * n_basis > len(X2):
                    continue  # fewer than 5 samples per coefficient: not a fair fit
                base = PiecewisePolynomialGrid(g, degree).fit(X2, y2)
                dg[g * g] = rel_l2(base.predict(X2t), y2t)
            ours = {}
            for k in cfg["curve_parts"]:
                parts = _two_level(k)
                model, err, sec = _fit_eval(
                    lambda: HierarchicalPOURegressor(partitions=parts, degree=degree),
                    X2, y2, X2t, y2t, repeats,
                )
                ours[k] = err
                same = dg.get(k, np.nan)
                match = [c for c, e in sorted(dg.items()) if e <= err]
                needed = f"{match[0]}" if match else f"> {max(dg)}"
                curve_rows.append((label, degree, f"{parts} = {k}", fmt_err(err),
                                   _n_iter(model), fmt_time(sec), fmt_err(same),
                                   needed))
                rows.append((f"curve {label}, {parts} deg {degree}",
                             "C0: ~10x fewer partitions than DG" if label == "|s|" else "(partitions align)",
                             fmt_err(err), _n_iter(model), fmt_time(sec),
                             f"DG {k} cells: {fmt_err(same)}; DG cells to match: {needed}"))
            ax.loglog(list(dg), list(dg.values()), "s-", label=f"DG grid, degree {degree}")
            ax.loglog(list(ours), list(ours.values()), "o-", label=f"HPOU, degree {degree}")
        ax.set_title(f"f(s) = {label}, s = y - (x - 1/2)^2")
        ax.set_xlabel("partitions / cells")
        ax.set_ylabel("relative L2 test error")
        ax.legend(fontsize=7)
    save_figure(fig, out_dir, _name("paper_curve_2d", quick), report)
    report.add(
        "Curve-aligned 2-D functions vs a DG-like grid",
        "Baseline: discontinuous piecewise polynomial least squares of the same "
        "total degree on a uniform g x g grid (numpy lstsq per cell, no "
        "continuity; the broken polynomial space of a DG method), fitted to the "
        "same samples; grids with fewer than 5 samples per coefficient are "
        "left out. 'DG cells to match' is the smallest grid (from "
        f"{[g * g for g in cfg['dg_grid']]} cells) whose error is <= ours. "
        f"n_train={cfg['n_2d']}, n_test={cfg['n_test']}.",
        (("f", "degree", "partitions", "HPOU rel L2", "V-cycles", "fit time",
          "DG same cell count", "DG cells to match"), curve_rows),
    )

    # ------------------------------------------------ 5. I-V curves, log target
    for label, func, d, n in (("diode I(V), Shockley + R_s (Lambert W)", P.diode_iv, 1, cfg["n_1d"]),
                              ("MOSFET I_D(V_GS, V_DS), EKV", P.mosfet_iv, 2, cfg["n_2d"])):
        prob = P.Problem(label, d, func, (0.0,) * d, (1.0,) * d)
        Xi, yi = prob.sample(n, seed=0)
        Xit, yit = prob.sample(cfg["n_test"], seed=1)
        decades = np.log10(yi.max() / yi.min())
        for parts, paper in (((4, 2), "2.3e-6"), ((8,), "7.5e-5")):
            model, err, sec = _fit_eval(
                lambda: TransformedTargetRegressor(
                    regressor=HierarchicalPOURegressor(partitions=parts, degree=4),
                    func=np.log, inverse_func=np.exp, check_inverse=False,
                ),
                Xi, yi, Xit, yit, repeats,
            )
            log_err = rel_l2(np.log(model.predict(Xit)), np.log(yit))
            rows.append((f"{label}, {parts} quartic", paper, fmt_err(err),
                         _n_iter(model), fmt_time(sec),
                         f"{decades:.1f} decades; rel L2 of log I: {fmt_err(log_err)}"))

    report.add(
        "Summary: paper reproduction",
        "Relative L2 test error of the current-version estimator on each of "
        "the paper's experiments (doc/design.md section 5). Defaults (linear, "
        "i.e. softmax-affine, gates) unless stated; the paper used small tanh "
        "MLP gates (`gate=\"mlp\"`, random_state=0). I-V curves "
        "use `TransformedTargetRegressor(func=np.log, inverse_func=np.exp)` "
        "with inputs in [0, 1]; 'ours' is the relative L2 error of the current "
        "itself, the notes give it for log I (the paper's l2 was measured on "
        "its scaled log target; which normalization it used is not stated).",
        (("problem", "paper", "ours (rel L2)", "V-cycles (n_iter_)", "fit time", "notes"),
         rows),
    )
    return {"sine": sine, "X": X, "y": y}


def _name(stem, quick):
    return f"{stem}{'-quick' if quick else ''}.png"
