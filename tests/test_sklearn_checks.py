"""scikit-learn's estimator checks, run in full on every kind of configuration.

No check is skipped or expected to fail (no ``expected_failed_checks``, no
tag overrides): every check must pass for every configuration below, which
between them set every parameter a user can set to each of its kinds (fixed
or adaptive tree, every gate family, every noise model, polish on and off,
early stopping, explicit degrees the small check data cannot determine).
The only checks that do not run are the ones scikit-learn itself skips when
an optional dependency is missing (array API).
"""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skpou import HierarchicalPOURegressor

CONFIGURATIONS = [
    HierarchicalPOURegressor(random_state=0),
    HierarchicalPOURegressor(partitions=(2, 2), degree=0, n_cycles=3, random_state=0),
    HierarchicalPOURegressor(partitions=(2, 2), degree=1, n_cycles=3, random_state=0),
    HierarchicalPOURegressor(partitions=(4, 2), degree=2, random_state=0),
    HierarchicalPOURegressor(partitions=(3,), degree=2, gate="quadratic", sigma="em",
                             polish=False, random_state=0),
    HierarchicalPOURegressor(partitions=(2, 2), degree=2, gate="mlp", gate_hidden_sizes=(4,),
                             sigma="fixed", n_cycles=2, random_state=0),
    HierarchicalPOURegressor(partitions=(2, 2), degree=2, early_stopping=True,
                             em_subsample=50, random_state=0),
    HierarchicalPOURegressor(degree=3, gate="mlp", gate_alpha=1e-3, random_state=0),
]


@parametrize_with_checks(CONFIGURATIONS)
def test_sklearn_checks(estimator, check):
    check(estimator)
