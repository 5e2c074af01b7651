"""skpou: hierarchical partition of unity networks for scikit-learn."""

from ._estimator import HierarchicalPOURegressor

__all__ = ["HierarchicalPOURegressor"]
__version__ = "0.1.0"
