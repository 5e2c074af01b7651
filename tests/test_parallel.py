"""skpou._parallel: the map and sum over fixed row blocks."""

import numpy as np

from skpou._parallel import ROWS_PER_BLOCK, Threads, local_threads, row_blocks


def test_row_blocks_cover_the_rows_in_fixed_sizes():
    blocks = row_blocks(2 * ROWS_PER_BLOCK + 5)
    assert [b.stop - b.start for b in blocks] == [ROWS_PER_BLOCK, ROWS_PER_BLOCK, 5]
    assert blocks[0].start == 0 and blocks[-1].stop == 2 * ROWS_PER_BLOCK + 5


def test_map_and_sum_give_the_same_on_threads_and_serially():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((3 * ROWS_PER_BLOCK + 17, 3))
    w = rng.uniform(size=X.shape[0])

    def moments(X, w):
        return w @ X, (w[:, None] * X).T @ X

    serial = Threads()
    with local_threads(2) as threads:
        for runner in (serial, threads):
            total, second = runner.sum(moments, X, w)
            np.testing.assert_allclose(total, w @ X, rtol=1e-12)
            np.testing.assert_allclose(second, (w[:, None] * X).T @ X, rtol=1e-12)
        # the same blocks in the same order: bit-identical sums
        for a, b in zip(serial.sum(moments, X, w), threads.sum(moments, X, w)):
            np.testing.assert_array_equal(a, b)
        mapped = threads.map(lambda X, w: X[:, 0] * w, X, w)
        np.testing.assert_array_equal(np.concatenate(mapped), X[:, 0] * w)
        assert threads.map_tasks(lambda t: t * t, [1, 2, 3]) == [1, 4, 9]


def test_functions_may_write_into_an_output_block():
    X = np.arange(2 * ROWS_PER_BLOCK + 3, dtype=float)[:, None]
    out = np.empty(X.shape[0])

    def double(X, out):
        out[:] = 2 * X[:, 0]

    with local_threads(2) as threads:
        threads.map(double, X, out)
    np.testing.assert_array_equal(out, 2 * X[:, 0])
