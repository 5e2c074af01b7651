"""
=========================================================
Choosing partitions and degree with GridSearchCV
=========================================================

:class:`~skpou.HierarchicalPOURegressor` is a regular scikit-learn estimator:
it can sit in a :class:`~sklearn.pipeline.Pipeline`, be cloned, and be tuned
by :class:`~sklearn.model_selection.GridSearchCV`. On noisy data the two
main knobs, the tree of ``partitions`` and the expert ``degree``, trade bias
against variance: too few pieces underfit, too many fit the noise. Here we
pick them by 3-fold cross-validation on noisy samples of Franke's 2-D
function, then estimate the generalization of the whole procedure (search
included) with :func:`~sklearn.model_selection.cross_validate` (nested
cross-validation).
"""

# %%
import os

import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import GridSearchCV, KFold, cross_validate
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skpou import HierarchicalPOURegressor
from skpou.demo import franke

QUICK = os.environ.get("SKPOU_EXAMPLES_QUICK") == "1"

rng = np.random.default_rng(0)
n_samples = 400 if QUICK else 2000
X = rng.uniform(0, 1, (n_samples, 2))
y = franke(X[:, 0], X[:, 1]) + 0.05 * rng.standard_normal(n_samples)

# %%
# The network rescales its inputs to [-1, 1] itself; the scaler only shows
# that it composes with other steps.
pipeline = Pipeline(
    [
        ("scale", StandardScaler()),
        ("pou", HierarchicalPOURegressor(random_state=0)),
    ]
)
partitions = [(2,), (2, 2)] if QUICK else [(2,), (2, 2), (4, 2), (4, 4), (8, 4)]
degrees = [1, 3] if QUICK else [1, 2, 3, 4]
search = GridSearchCV(
    pipeline,
    param_grid={"pou__partitions": partitions, "pou__degree": degrees},
    scoring="neg_root_mean_squared_error",
    cv=KFold(3, shuffle=True, random_state=0),
)
search.fit(X, y)
print("best parameters:", search.best_params_)
print(f"best cross-validated RMSE: {-search.best_score_:.4f} (noise std 0.05)")

# %%
# Cross-validated RMSE over the grid. With noise of standard deviation 0.05
# no model can do better than an RMSE of about 0.05: small trees with low
# degree underfit, and once the error reaches that floor, adding partitions
# or degree only adds variance.
scores = np.empty((len(partitions), len(degrees)))
for params, score in zip(
    search.cv_results_["params"], search.cv_results_["mean_test_score"]
):
    i = partitions.index(params["pou__partitions"])
    scores[i, degrees.index(params["pou__degree"])] = -score
fig, ax = plt.subplots(figsize=(6, 4))
image = ax.imshow(scores, cmap="viridis_r")
ax.set_xticks(range(len(degrees)), [str(d) for d in degrees])
ax.set_yticks(range(len(partitions)), [str(p) for p in partitions])
ax.set_xlabel("degree")
ax.set_ylabel("partitions")
for i in range(len(partitions)):
    for j in range(len(degrees)):
        light = image.norm(scores[i, j]) < 0.5  # yellow end of viridis_r
        ax.text(
            j, i, f"{scores[i, j]:.3f}", ha="center", va="center",
            color="k" if light else "w",
        )
fig.colorbar(image, ax=ax, label="cross-validated RMSE")
ax.set_title("GridSearchCV over partitions and degree")
fig.tight_layout()

# %%
# Nested cross-validation: the grid search runs inside each outer fold, so
# the outer scores measure the tuned model on data the search never saw.
nested = cross_validate(
    search,
    X,
    y,
    scoring="neg_root_mean_squared_error",
    cv=KFold(2 if QUICK else 3, shuffle=True, random_state=1),
    return_estimator=True,
)
outer_rmse = -nested["test_score"]
print(f"nested CV RMSE: {outer_rmse.mean():.4f} +- {outer_rmse.std():.4f}")
for fold, estimator in enumerate(nested["estimator"]):
    print(f"outer fold {fold}: selected {estimator.best_params_}")
plt.show()
