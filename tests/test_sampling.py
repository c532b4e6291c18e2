"""City-draw helpers (worldrep/sampling.py) against plain references."""
import numpy as np
import pytest

from worldrep.sampling import draw_items, has_repeats, in_sorted, item_keys, pair_from_index


def rank(i, j, n):
    return i * n - i * (i + 1) // 2 + (j - i - 1)


@pytest.mark.parametrize("n", [2, 3, 7, 50])
def test_pair_from_index_enumerates_the_upper_triangle(n):
    expected = [(i, j) for i in range(n) for j in range(i + 1, n)]
    assert pair_from_index(np.arange(len(expected)), n).tolist() == [list(p) for p in expected]


@pytest.mark.parametrize("n", [6204, 6304, 10000])
def test_pair_from_index_is_exact_at_every_row_boundary(n):
    """The float inverse is corrected by ±1; row starts and ends are where a wrong correction would show."""
    i = np.arange(n - 1)
    firsts, lasts = np.stack([i, i + 1], 1), np.stack([i, np.full_like(i, n - 1)], 1)
    for pairs in (firsts, lasts):
        assert np.array_equal(pair_from_index(rank(pairs[:, 0], pairs[:, 1], n), n), pairs)


def test_draw_items_gives_distinct_cities_with_one_required():
    rng = np.random.default_rng(0)
    pool, required = np.arange(10), np.array([8, 9])
    cities, k = draw_items(rng, 5000, (2, 3, 4), pool, required)
    assert set(k.tolist()) == {2, 3, 4}
    assert not has_repeats(cities).any()
    assert all((row[:kk] >= 8).any() and (row[kk:] == -1).all() for row, kk in zip(cities, k))
    first_is_required = np.mean(cities[k == 2, 0] >= 8)
    assert 0.5 < first_is_required < 0.8  # shuffled: not always first (pairs of two required cities count twice)


def test_item_keys_ignore_order_and_tell_sets_apart():
    a = np.array([[3, 1, 2, -1], [2, 3, 1, -1], [1, 2, 4, -1], [1, 2, -1, -1]])
    keys = item_keys(a)
    assert keys[0] == keys[1] and len(set(keys.tolist())) == 3
    assert in_sorted(keys, np.sort(keys[[2]])).tolist() == [False, False, True, False]
    assert in_sorted(keys, np.zeros(0, dtype=np.uint64)).tolist() == [False] * 4
