"""Refitting the stored reference cases reproduces their predictions.

The cases and how the stored file is rewritten: ``tests/reference_fits.py``.
"""

import numpy as np
import pytest

from reference_fits import CASES, PATH, fit_case

STORED = np.load(PATH)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fit_reproduces_stored_predictions(name):
    for key, value in fit_case(name).items():
        expected = STORED[f"{name}/{key}"]
        scale = np.abs(expected).max()
        np.testing.assert_allclose(
            value, expected, rtol=1e-12, atol=1e-12 * scale,
            err_msg=f"{name}/{key} moved (stored at commit {STORED['commit']})",
        )
