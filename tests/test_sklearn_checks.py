"""scikit-learn's estimator checks, run in full.

No check is skipped or expected to fail (no ``expected_failed_checks``, no
tag overrides): every check must pass. The only checks that do not run are
the ones scikit-learn itself skips when an optional dependency is missing
(pandas, array API).

The default estimator runs every check: ``degree="auto"`` lowers the degree
to what the samples support. Degree 0 runs every check too.
``check_sample_weight_equivalence_on_dense_data``
fits 15 (weighted) samples with 30 features, and any degree >= 1 has more
basis functions than that, which the estimator rejects by design. The
degree-1 instance therefore runs every check except that one; the rejection
itself is asserted by ``test_degree1_rejects_sample_weight_equivalence_data``.
"""

import numpy as np
import pytest
from sklearn.utils.estimator_checks import (
    _get_check_estimator_ids,
    estimator_checks_generator,
    parametrize_with_checks,
)

from skpou import HierarchicalPOURegressor

DEGREE0 = HierarchicalPOURegressor(
    partitions=(2, 2), degree=0, n_cycles=3, random_state=0
)
DEGREE1 = HierarchicalPOURegressor(
    partitions=(2, 2), degree=1, n_cycles=3, random_state=0
)
# Fits fewer samples than degree >= 1 has basis functions in 30 dimensions:
# not applicable to the degree-1 instance (asserted separately below).
NOT_APPLICABLE_TO_DEGREE1 = {"check_sample_weight_equivalence_on_dense_data"}


@parametrize_with_checks([HierarchicalPOURegressor(random_state=0), DEGREE0])
def test_sklearn_checks_default_and_degree0(estimator, check):
    check(estimator)


def _degree1_checks():
    params = []
    for estimator, check in estimator_checks_generator(DEGREE1, mark=None):
        name = _get_check_estimator_ids(check)
        if name.split("(")[0] in NOT_APPLICABLE_TO_DEGREE1:
            continue
        params.append(pytest.param(estimator, check, id=name))
    return params


@pytest.mark.parametrize("estimator, check", _degree1_checks())
def test_sklearn_checks_degree1(estimator, check):
    check(estimator)


def test_degree1_rejects_sample_weight_equivalence_data():
    # The data of check_sample_weight_equivalence_on_dense_data: 15 rows, 30
    # features, some zero weights. degree=1 has 31 basis functions.
    rng = np.random.RandomState(42)
    X = rng.rand(15, 30)
    y = rng.rand(15)
    sample_weight = rng.randint(0, 3, size=15).astype(float)
    with pytest.raises(ValueError, match="basis functions"):
        HierarchicalPOURegressor(partitions=(2, 2), degree=1).fit(
            X, y, sample_weight=sample_weight
        )
