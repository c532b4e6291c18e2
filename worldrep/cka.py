"""Linear CKA between city representations, and the family matrices built from it (METHOD §12).

Two estimators, both on linear kernels K = XXᵀ, L = YYᵀ of X [n, d_x], Y [n, d_y] with rows aligned by city:

- biased (the paper's): CKA = ⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F), H = I − 11ᵀ/n;
- debiased (Project addition): the same ratio with the unbiased U-statistic HSIC_u of Song et al. (2012)
  in place of the biased ⟨HKH, HLH⟩, not clipped.

`kernel_cka` and `kernel_debiased_cka` are those definitions written with n×n matrices; they are the reference.
Everything else works in feature space (d×d products, no n×n matrix), which is what makes the 21×21 family
matrices cheap. Everything is float64: the debiased numerator is a difference of nearly equal terms.
"""
from __future__ import annotations

from itertools import combinations
from typing import NamedTuple

import numpy as np

# --------------------------------------------------------------------------------------------------------
# Reference definitions (n×n kernels). O(n²d + n³): for tests and the benchmark baseline, not for the workflow.


def centring_matrix(n: int) -> np.ndarray:
    """H = I − 11ᵀ/n [n, n]."""
    return np.eye(n) - np.full((n, n), 1.0 / n)


def kernel_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Biased linear CKA from its definition: ⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F)."""
    X, Y = np.asarray(X, np.float64), np.asarray(Y, np.float64)
    H = centring_matrix(len(X))
    Kc, Lc = H @ (X @ X.T) @ H, H @ (Y @ Y.T) @ H
    return float(np.vdot(Kc, Lc) / (np.linalg.norm(Kc) * np.linalg.norm(Lc)))


def kernel_hsic_u(K: np.ndarray, L: np.ndarray) -> float:
    """HSIC_u(K, L) of METHOD §12 with explicit n×n matrices; K̃, L̃ are K, L with zero diagonals. Needs n ≥ 4."""
    n = len(K)
    Kt, Lt = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    ones = np.ones(n)
    trace = np.trace(Kt @ Lt)
    sums = (ones @ Kt @ ones) * (ones @ Lt @ ones) / ((n - 1) * (n - 2))
    cross = 2.0 / (n - 2) * (ones @ Kt @ Lt @ ones)
    return float((trace + sums - cross) / (n * (n - 3)))


def kernel_debiased_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Debiased linear CKA from its definition: HSIC_u(K, L) / √(HSIC_u(K, K) HSIC_u(L, L)), columns centred."""
    X, Y = centre(X), centre(Y)
    K, L = X @ X.T, Y @ Y.T
    return kernel_hsic_u(K, L) / float(np.sqrt(kernel_hsic_u(K, K) * kernel_hsic_u(L, L)))


# --------------------------------------------------------------------------------------------------------
# Feature-space forms (the ones the workflow uses).


def centre(X: np.ndarray) -> np.ndarray:
    """Column-centred float64 copy of X [n, d]; features are not standardised (METHOD §12)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected a [n, d] feature matrix, got shape {X.shape}")
    return X - X.mean(axis=0)


def frobenius2(A: np.ndarray, B: np.ndarray) -> float:
    """‖AᵀB‖²_F = ⟨AAᵀ, BBᵀ⟩_F, through the d_a×d_b product instead of the two n×n kernels."""
    G = A.T @ B
    return float(np.vdot(G, G))


def hsic_u(cross, diag_dot, trace_product, n: int):
    """HSIC_u of METHOD §12 from feature-space sums of column-centred X, Y (scalars or same-shape arrays).

    cross = ‖XᵀY‖²_F, diag_dot = Σ_i K_ii L_ii, trace_product = tr K · tr L (tr K = ‖X‖²_F). Centred columns
    give Xᵀ1 = 0, hence K̃1 = X(Xᵀ1) − diag(K) = −diag(K) and 1ᵀK̃1 = −tr K, so the three terms of §12 become
    tr(K̃L̃) = cross − diag_dot, (1ᵀK̃1)(1ᵀL̃1) = trace_product and 1ᵀK̃L̃1 = diag_dot.
    """
    if n < 4:
        raise ValueError(f"HSIC_u needs n >= 4 rows, got {n}")
    sums = trace_product / ((n - 1) * (n - 2))
    return (cross - diag_dot + sums - 2.0 / (n - 2) * diag_dot) / (n * (n - 3))


def check_rows(X: np.ndarray, Y: np.ndarray) -> None:
    if len(X) != len(Y):
        raise ValueError(f"X and Y must have one row per city, in the same order: {len(X)} vs {len(Y)} rows")


def linear_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Biased linear CKA (the paper's): ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred X [n, d_x], Y [n, d_y]."""
    check_rows(X, Y)
    X, Y = centre(X), centre(Y)
    return frobenius2(X, Y) / float(np.sqrt(frobenius2(X, X) * frobenius2(Y, Y)))


def debiased_cka(X: np.ndarray, Y: np.ndarray) -> float:
    """Debiased linear CKA, HSIC_u(K, L) / √(HSIC_u(K, K) HSIC_u(L, L)), in feature space. Not clipped: it can
    be slightly negative for unrelated representations."""
    check_rows(X, Y)
    X, Y = centre(X), centre(Y)
    kx, ky = np.einsum("ij,ij->i", X, X), np.einsum("ij,ij->i", Y, Y)  # diag(K), diag(L) [n]
    n = len(X)
    xy = hsic_u(frobenius2(X, Y), kx @ ky, kx.sum() * ky.sum(), n)
    xx = hsic_u(frobenius2(X, X), kx @ kx, kx.sum() ** 2, n)
    yy = hsic_u(frobenius2(Y, Y), ky @ ky, ky.sum() ** 2, n)
    return float(xy / np.sqrt(xx * yy))


# --------------------------------------------------------------------------------------------------------
# Many models at once.


class PairSums(NamedTuple):
    """Every pairwise quantity both estimators need, over M models sharing the same n rows."""
    cross: np.ndarray     # [M, M] ‖X_aᵀX_b‖²_F
    diag_dot: np.ndarray  # [M, M] Σ_i K^a_ii K^b_ii
    trace: np.ndarray     # [M] tr K^a = ‖X_a‖²_F
    n: int


def pair_sums(features: list[np.ndarray]) -> PairSums:
    """Centre each model once, then one d×d product per pair: the only O(n d²) step of a CKA matrix."""
    centred = [centre(X) for X in features]
    n = len(centred[0])
    if any(len(X) != n for X in centred):
        raise ValueError(f"all models need the same rows (cities); got {[len(X) for X in centred]}")
    M = len(centred)
    cross = np.empty((M, M))
    for a in range(M):
        cross[a, a] = frobenius2(centred[a], centred[a])
        for b in range(a + 1, M):
            cross[a, b] = cross[b, a] = frobenius2(centred[a], centred[b])
    diags = np.stack([np.einsum("ij,ij->i", X, X) for X in centred])  # [M, n] diag(K^a)
    return PairSums(cross, diags @ diags.T, diags.sum(axis=1), n)


def normalise(hsic: np.ndarray) -> np.ndarray:
    """CKA_ab = HSIC_ab / √(HSIC_aa HSIC_bb) for a whole [M, M] matrix of HSIC values."""
    scale = np.sqrt(np.diag(hsic))
    return hsic / np.outer(scale, scale)


def cka_from_sums(sums: PairSums, debiased: bool) -> np.ndarray:
    if not debiased:
        return normalise(sums.cross)  # biased HSIC ∝ ‖X_aᵀX_b‖²_F; the 1/n² factor cancels
    return normalise(hsic_u(sums.cross, sums.diag_dot, np.outer(sums.trace, sums.trace), sums.n))


def cka_matrix(features: list[np.ndarray], debiased: bool = False) -> np.ndarray:
    """Symmetric [M, M] CKA matrix over models, each [n, d_m] with rows aligned by city."""
    return cka_from_sums(pair_sums(features), debiased)


def cka_matrices(features: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Both estimators from one pass of products ({"biased", "debiased"} -> [M, M]): §12 reports them together."""
    sums = pair_sums(features)
    return {"biased": cka_from_sums(sums, False), "debiased": cka_from_sums(sums, True)}


# --------------------------------------------------------------------------------------------------------
# Family matrices and pair selections. The model order is [(variant, seed) for variant in variants for seed
# in seeds], so `values` reshapes to blocks[a, s, b, s′] = CKA(variant a seed s, variant b seed s′).


def seed_blocks(values: np.ndarray, variants: list, seeds: list) -> np.ndarray:
    """[V·S, V·S] model matrix -> [V, S, V, S] blocks; checks shape and symmetry."""
    V, S = len(variants), len(seeds)
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (V * S, V * S):
        raise ValueError(f"expected a {V * S}x{V * S} matrix for {V} variants x {S} seeds, got {values.shape}")
    if not np.allclose(values, values.T, equal_nan=True):
        raise ValueError("the CKA matrix must be symmetric")
    return values.reshape(V, S, V, S)


def cell_values(blocks: np.ndarray, a: int, b: int) -> np.ndarray:
    """The CKA values averaged into family cell (a, b): all S² seed combinations off the diagonal; on it only
    the S(S−1)/2 distinct cross-seed pairs, never the self-pairs (METHOD §12 Project rule)."""
    block = blocks[a, :, b, :]
    if a != b:
        return block.ravel()
    return block[np.triu_indices(len(block), k=1)]


def family_matrix(values: np.ndarray, variants: list, seeds: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Variant × variant (mean, SEM, n) from a model × model CKA matrix; SEM = std (ddof = 0) / √n."""
    blocks = seed_blocks(values, variants, seeds)
    V = len(variants)
    mean, sem, count = np.empty((V, V)), np.empty((V, V)), np.empty((V, V), dtype=int)
    for a in range(V):
        for b in range(V):
            cell = cell_values(blocks, a, b)
            mean[a, b], sem[a, b], count[a, b] = cell.mean(), cell.std() / np.sqrt(len(cell)), len(cell)
    return mean, sem, count


def disjoint_pairs(task_sets: dict) -> list[tuple]:
    """Pairs (a, b) of distinct variants, a before b in the dict's order, that share no task (§12 "CKA vs number
    of tasks"): with variants 1–6 of pt1/pt2/pt3 this keeps 15/10/5 pairs."""
    return [(a, b) for a, b in combinations(task_sets, 2) if not set(task_sets[a]) & set(task_sets[b])]


def pooled_pair_values(values: np.ndarray, variants: list, seeds: list, pairs: list[tuple]) -> list[float]:
    """All S² seed combinations (same-seed and cross-seed alike) of every pair, pooled: pair by pair, then
    (seed of a, seed of b) in `seeds` order."""
    blocks = seed_blocks(values, variants, seeds)
    return [float(v) for a, b in pairs for v in blocks[variants.index(a), :, variants.index(b), :].ravel()]


def same_seed_pair_values(values: np.ndarray, variants: list, seeds: list, pairs: list[tuple]) -> dict:
    """{seed: [CKA(a seed s, b seed s) for each pair]}: the per-seed panels of §12, same-seed pairs only."""
    blocks = seed_blocks(values, variants, seeds)
    return {seed: [float(blocks[variants.index(a), s, variants.index(b), s]) for a, b in pairs]
            for s, seed in enumerate(seeds)}
