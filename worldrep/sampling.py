"""City draws for task items (METHOD §3.3). Everything works on city row indices; IDs are applied at formatting.

An item is a row of `cities` int [n, K] (-1 padding past its count) and its count `k` int [n].
"""
from __future__ import annotations

import numpy as np


def pair_from_index(linear: np.ndarray, pool_size: int) -> np.ndarray:
    """The unordered pair (i < j) with rank `linear` in row-major order of the upper triangle. int [n, 2]."""
    linear = np.asarray(linear, dtype=np.int64)
    # Row i starts at rank i·N − i(i+1)/2; invert that quadratic, then correct the float estimate by ±1.
    n = pool_size
    i = np.floor((2 * n - 1 - np.sqrt((2 * n - 1) ** 2 - 8 * linear.astype(float))) / 2).astype(np.int64)
    start = i * n - i * (i + 1) // 2
    i = np.where(start > linear, i - 1, i)
    start = i * n - i * (i + 1) // 2
    next_start = (i + 1) * n - (i + 1) * (i + 2) // 2
    i = np.where(linear >= next_start, i + 1, i)
    start = i * n - i * (i + 1) // 2
    j = linear - start + i + 1
    return np.stack([i, j], axis=1)


def draw_distinct_pairs(rng: np.random.Generator, n_items: int, pool: np.ndarray) -> np.ndarray:
    """n_items distinct unordered pairs from `pool` (row indices), each in random order. int [n, 2].

    Drawing all splits in one pass makes every pair unique across train/val/test.
    """
    n_pairs = len(pool) * (len(pool) - 1) // 2
    if n_items > n_pairs:
        raise ValueError(f"asked for {n_items} distinct pairs, but a pool of {len(pool)} cities has only {n_pairs}")
    pairs = pair_from_index(rng.choice(n_pairs, size=n_items, replace=False), len(pool))
    swap = rng.random(n_items) < 0.5
    pairs[swap] = pairs[swap, ::-1]
    return pool[pairs]


def has_repeats(cities: np.ndarray) -> np.ndarray:
    """Rows whose used cities are not all distinct (padding -1 never counts as a repeat). bool [n]."""
    s = np.sort(cities, axis=1)
    return np.any((s[:, 1:] == s[:, :-1]) & (s[:, 1:] >= 0), axis=1)


def shuffle_positions(rng: np.random.Generator, cities: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Uniformly permute the first k entries of every row; padding stays at the end."""
    keys = rng.random(cities.shape)
    keys[np.arange(cities.shape[1])[None, :] >= k[:, None]] = np.inf
    return np.take_along_axis(cities, np.argsort(keys, axis=1), axis=1)


def draw_items(
    rng: np.random.Generator,
    n: int,
    counts: tuple[int, ...],
    pool: np.ndarray,
    required: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """n items of distinct cities in random order, the city count uniform over `counts`.

    With `required` (the Atlantis pool), one city comes from it and the others from `pool`; positions
    are shuffled afterwards so the required city lands anywhere. Without it the cities are i.i.d. draws
    conditioned on being distinct, already in uniformly random order, so the spec's extra permutation
    would not change the distribution and is skipped. Rows with a repeated city are redrawn
    (Project rule: redraw, so split sizes stay exact).
    """
    k = rng.choice(np.asarray(counts), size=n)
    width = max(counts)
    cities = np.full((n, width), -1, dtype=np.int64)
    todo = np.arange(n)
    while len(todo):
        draw = pool[rng.integers(0, len(pool), size=(len(todo), width))]
        if required is not None:
            draw[:, 0] = required[rng.integers(0, len(required), size=len(todo))]
        draw[np.arange(width)[None, :] >= k[todo, None]] = -1
        cities[todo] = draw
        todo = todo[has_repeats(draw)]
    return (cities if required is None else shuffle_positions(rng, cities, k)), k


def item_keys(cities: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each row's sorted city set: the leakage key (METHOD §3.4) within one dataset.

    A collision could only make a val/test candidate be rejected needlessly, never let a train key through.
    """
    s = np.sort(cities, axis=1).astype(np.uint64) + np.uint64(1)  # padding -1 -> 0
    h = np.full(len(cities), np.uint64(0xCBF29CE484222325))
    with np.errstate(over="ignore"):
        for col in s.T:
            h = (h ^ col) * np.uint64(0x100000001B3)
            h ^= h >> np.uint64(29)
    return h


def in_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Membership of each value in an ascending array. bool [n]."""
    if len(sorted_keys) == 0:
        return np.zeros(len(values), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[pos] == values
