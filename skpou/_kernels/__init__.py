"""Numba kernels of the multilevel EM, grouped by their one Python owner.

- ``mixture``: E-step responsibilities and the mixture's mean and variance
  (owner: ``skpou._tree``);
- ``experts``: the experts' normal equations and weighted residuals (owner:
  ``skpou._experts``);
- ``polish``: the blended (joint) least-squares system (owner:
  ``skpou._polish``);
- ``gates``: log-softmax over sibling groups and the softmax Newton terms
  (owner: ``skpou._gates``);
- ``_common``: the skeleton they share (row selection, basis evaluation).

Arrays in, arrays out: no scikit-learn here, and nothing but the owners
imports these modules. Shapes used throughout (one level of the tree, K
nodes):

- ``X``        (n_samples, n_features): inputs already mapped to [-1, 1]^n.
- ``Y``        (n_samples, n_targets): standardized targets.
- ``recipe``   (n_basis, 3): how to build the total-degree basis (see
  ``skpou._basis.basis_recipe``).
- ``centers``, ``scales`` (K, n_features): each expert's local frame; expert k
  evaluates Legendre polynomials at z = (x - centers[k]) / scales[k], so every
  local least-squares problem stays well conditioned however small its
  partition is.
- ``coef``     (K, n_basis, n_targets): expert coefficients.
- ``log_gate`` (n_samples, K): log gate probabilities (rows sum to one).
- ``resp``     (n_samples, K): EM responsibilities.
- ``child_start`` (n_parents + 1,): the children of parent p are the nodes
  child_start[p]:child_start[p + 1] (siblings are contiguous).

All kernels are compiled with ``nogil=True`` so threads can run them on
blocks of rows at the same time; none of them uses Numba's own parallelism.
"""
